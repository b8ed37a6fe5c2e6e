"""DEFT: decompositional efficient fine-tuning, a sub-space of each weight replaced by a trained one."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_DEFT_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import DeftConfig
from .layer import DeftLayer, DeftLinear
from .model import DeftModel

register_peft_method(
    name="deft",
    config_cls=DeftConfig,
    model_cls=DeftModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_DEFT_TARGET_MODULES_MAPPING,
)

__all__ = ["DeftConfig", "DeftLayer", "DeftLinear", "DeftModel"]
