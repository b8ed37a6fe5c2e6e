"""Super-Tuning: a magnitude-chosen sparse set of weight entries trains (with an optional LoRA branch)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_SUPERTUNING_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import SupertuningConfig
from .layer import Linear, SupertuningLayer
from .model import SupertuningModel

register_peft_method(
    name="supertuning",
    config_cls=SupertuningConfig,
    model_cls=SupertuningModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_SUPERTUNING_TARGET_MODULES_MAPPING,
)

__all__ = ["Linear", "SupertuningConfig", "SupertuningLayer", "SupertuningModel"]
