"""LN tuning: train a copy of each normalisation layer (Zhao et al., 2023)."""

from ...mapping import register_peft_method
from ...utils.peft_types import PeftType
from .config import LNTuningConfig
from .layer import LNTuningLayer
from .model import LNTuningModel

register_peft_method(
    peft_type=PeftType.LN_TUNING, config_cls=LNTuningConfig, model_cls=LNTuningModel, prefix="ln_tuning_"
)

__all__ = ["LNTuningConfig", "LNTuningLayer", "LNTuningModel"]
