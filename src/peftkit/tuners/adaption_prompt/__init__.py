"""Adaption prompts: LLaMA-Adapter's zero-gated prompts in the top attention layers (Zhang et al., 2023)."""

from ...mapping import register_peft_method
from ...utils.peft_types import PeftType
from .config import AdaptionPromptConfig
from .layer import AdaptedAttention
from .model import AdaptionPromptModel

register_peft_method(
    peft_type=PeftType.ADAPTION_PROMPT, config_cls=AdaptionPromptConfig, model_cls=AdaptionPromptModel
)

__all__ = ["AdaptedAttention", "AdaptionPromptConfig", "AdaptionPromptModel"]
