"""GLoRA: generalised low-rank adaptation of a layer's weight and bias (Chavan et al., 2023)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_GLORA_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import GloraConfig
from .layer import GloraLayer, GloraLinear
from .model import GloraModel

register_peft_method(
    name="glora",
    config_cls=GloraConfig,
    model_cls=GloraModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_GLORA_TARGET_MODULES_MAPPING,
)

__all__ = ["GloraConfig", "GloraLayer", "GloraLinear", "GloraModel"]
