"""Multitask prompt tuning: a shared prompt with per-task low-rank factors (Wang et al., 2023)."""

from ...mapping import register_peft_method
from ...utils.peft_types import PeftType
from .config import MultitaskPromptTuningConfig, MultitaskPromptTuningInit
from .model import MultitaskPromptEmbedding

register_peft_method(
    peft_type=PeftType.MULTITASK_PROMPT_TUNING, config_cls=MultitaskPromptTuningConfig, model_cls=None
)

__all__ = ["MultitaskPromptEmbedding", "MultitaskPromptTuningConfig", "MultitaskPromptTuningInit"]
