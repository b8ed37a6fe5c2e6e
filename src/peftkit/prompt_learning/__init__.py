"""The PeftModel side of the prompt-learning methods (prompt tuning, prefix tuning, Cartridge, P-tuning, multitask
prompt tuning): adapter bookkeeping, virtual tokens, task forwards, generation and state dicts.

The method-specific encoders live in `peftkit.tuners.<method>`; this package wires them into a PeftModel.
"""

from .forward import prompt_learning_forward
from .generation import causal_lm_generate, seq2seq_generate
from .model_config import fill_prompt_learning_config
from .prompts import get_prompt, get_prompt_embedding_to_save
from .state import (
    PromptLearningState,
    add_prompt_adapter,
    delete_prompt_adapter,
    set_prompt_adapter,
    setup_prompt_learning,
)

__all__ = [
    "PromptLearningState",
    "add_prompt_adapter",
    "causal_lm_generate",
    "delete_prompt_adapter",
    "fill_prompt_learning_config",
    "get_prompt",
    "get_prompt_embedding_to_save",
    "prompt_learning_forward",
    "seq2seq_generate",
    "set_prompt_adapter",
    "setup_prompt_learning",
]
