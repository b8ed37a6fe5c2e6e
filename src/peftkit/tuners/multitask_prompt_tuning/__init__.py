"""Multitask prompt tuning: a shared prompt with per-task low-rank factors (Wang et al., 2023)."""

from .._registration import register_peft_method
from .config import MultitaskPromptTuningConfig, MultitaskPromptTuningInit
from .model import MultitaskPromptEmbedding

register_peft_method(
    name="multitask_prompt_tuning",
    config_cls=MultitaskPromptTuningConfig,
    model_cls=MultitaskPromptEmbedding,
    prefix="multitask_prompt_tuning_",
)

__all__ = ["MultitaskPromptEmbedding", "MultitaskPromptTuningConfig", "MultitaskPromptTuningInit"]
