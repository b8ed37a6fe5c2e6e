"""Prefix tuning: trained key/value prefixes in every attention layer (Li & Liang, 2021)."""

from .._registration import register_peft_method
from .config import PrefixTuningConfig
from .model import PrefixEncoder

register_peft_method(
    name="prefix_tuning", config_cls=PrefixTuningConfig, model_cls=PrefixEncoder, prefix="prefix_tuning_"
)

__all__ = ["PrefixEncoder", "PrefixTuningConfig"]
