"""MiSS: one small trained shard shared by every shard of the weight (Kang et al., 2024)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_MISS_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import MissConfig
from .layer import MissLayer, MissLinear
from .model import MissModel

register_peft_method(
    name="miss",
    config_cls=MissConfig,
    model_cls=MissModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_MISS_TARGET_MODULES_MAPPING,
)

__all__ = ["MissConfig", "MissLayer", "MissLinear", "MissModel"]
