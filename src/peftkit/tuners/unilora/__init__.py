"""Uni-LoRA: all LoRA factors of a model read from one trained vector (Li et al., 2025)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_UNILORA_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import UniLoraConfig
from .layer import Linear, UniLoraLayer
from .model import UniLoraModel

register_peft_method(
    name="unilora",
    config_cls=UniLoraConfig,
    model_cls=UniLoraModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_UNILORA_TARGET_MODULES_MAPPING,
)

__all__ = ["Linear", "UniLoraConfig", "UniLoraLayer", "UniLoraModel"]
