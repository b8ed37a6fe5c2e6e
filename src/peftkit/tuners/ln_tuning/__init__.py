"""LN tuning: train a copy of each normalisation layer (Zhao et al., 2023)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import LNTuningConfig
from .layer import LNTuningLayer
from .model import LNTuningModel

register_peft_method(
    name="ln_tuning",
    config_cls=LNTuningConfig,
    model_cls=LNTuningModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING,
)

__all__ = ["LNTuningConfig", "LNTuningLayer", "LNTuningModel"]
