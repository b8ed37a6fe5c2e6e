"""VeRA: vector-based random matrix adaptation (Kopiczko et al., 2024)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import VeraConfig
from .layer import Linear, VeraLayer
from .model import VeraModel

register_peft_method(
    name="vera",
    config_cls=VeraConfig,
    model_cls=VeraModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING,
)

__all__ = ["Linear", "VeraConfig", "VeraLayer", "VeraModel"]
