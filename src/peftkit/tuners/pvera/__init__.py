"""PVeRA: probabilistic vector-based random matrix adaptation (arXiv 2512.07703)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_PVERA_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import PveraConfig
from .layer import Linear, PveraLayer
from .model import PveraModel

register_peft_method(
    name="pvera",
    config_cls=PveraConfig,
    model_cls=PveraModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_PVERA_TARGET_MODULES_MAPPING,
)

__all__ = ["Linear", "PveraConfig", "PveraLayer", "PveraModel"]
