"""P-tuning: virtual tokens computed by a small MLP or LSTM prompt encoder (Liu et al., 2021)."""

from ...mapping import register_peft_method
from ...utils.peft_types import PeftType
from .config import PromptEncoderConfig, PromptEncoderReparameterizationType
from .model import PromptEncoder

register_peft_method(peft_type=PeftType.P_TUNING, config_cls=PromptEncoderConfig, model_cls=None)

__all__ = ["PromptEncoder", "PromptEncoderConfig", "PromptEncoderReparameterizationType"]
