"""Adaption prompts: LLaMA-Adapter's zero-gated prompts in the top attention layers (Zhang et al., 2023)."""

from .._registration import register_peft_method
from .config import AdaptionPromptConfig
from .layer import AdaptedAttention
from .model import AdaptionPromptModel

register_peft_method(
    name="adaption_prompt",
    config_cls=AdaptionPromptConfig,
    model_cls=AdaptionPromptModel,
    prefix="adaption_prompt_",
)

__all__ = ["AdaptedAttention", "AdaptionPromptConfig", "AdaptionPromptModel"]
