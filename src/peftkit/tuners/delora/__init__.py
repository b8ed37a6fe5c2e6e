"""DeLoRA: decoupled low-rank adaptation, normalised components with a trained strength (Bini et al., 2025)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_DELORA_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import DeloraConfig
from .layer import DeloraLayer, DeloraLinear
from .model import DeloraModel

register_peft_method(
    name="delora",
    config_cls=DeloraConfig,
    model_cls=DeloraModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_DELORA_TARGET_MODULES_MAPPING,
)

__all__ = ["DeloraConfig", "DeloraLayer", "DeloraLinear", "DeloraModel"]
