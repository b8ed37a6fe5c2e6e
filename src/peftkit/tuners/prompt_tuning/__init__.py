"""Prompt tuning: trained soft prompts prepended to the input embeddings (Lester et al., 2021)."""

from ...mapping import register_peft_method
from ...utils.peft_types import PeftType
from .config import PromptTuningConfig, PromptTuningInit
from .model import PromptEmbedding

register_peft_method(peft_type=PeftType.PROMPT_TUNING, config_cls=PromptTuningConfig, model_cls=None)

__all__ = ["PromptEmbedding", "PromptTuningConfig", "PromptTuningInit"]
