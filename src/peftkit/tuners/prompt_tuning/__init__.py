"""Prompt tuning: trained soft prompts prepended to the input embeddings (Lester et al., 2021)."""

from .._registration import register_peft_method
from .config import PromptTuningConfig, PromptTuningInit
from .model import PromptEmbedding

register_peft_method(
    name="prompt_tuning", config_cls=PromptTuningConfig, model_cls=PromptEmbedding, prefix="prompt_tuning_"
)

__all__ = ["PromptEmbedding", "PromptTuningConfig", "PromptTuningInit"]
