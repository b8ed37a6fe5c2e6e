"""P-tuning: virtual tokens computed by a small MLP or LSTM prompt encoder (Liu et al., 2021)."""

from .._registration import register_peft_method
from .config import PromptEncoderConfig, PromptEncoderReparameterizationType
from .model import PromptEncoder

register_peft_method(
    name="p_tuning", config_cls=PromptEncoderConfig, model_cls=PromptEncoder, prefix="p_tuning_"
)

__all__ = ["PromptEncoder", "PromptEncoderConfig", "PromptEncoderReparameterizationType"]
