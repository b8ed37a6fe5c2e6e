"""Prefix tuning: trained key/value prefixes in every attention layer (Li & Liang, 2021)."""

from ...mapping import register_peft_method
from ...utils.peft_types import PeftType
from .config import PrefixTuningConfig
from .model import PrefixEncoder

register_peft_method(peft_type=PeftType.PREFIX_TUNING, config_cls=PrefixTuningConfig, model_cls=None)

__all__ = ["PrefixEncoder", "PrefixTuningConfig"]
