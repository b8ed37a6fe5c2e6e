"""Building a prompt-learning adapter's encoder (the module saved under `prompt_encoder.<adapter>`)."""

from __future__ import annotations

from torch import nn

from ..config import PromptLearningConfig
from ..tuners.cartridge import CartridgeEncoder
from ..tuners.cpt import CPTEmbedding
from ..tuners.multitask_prompt_tuning import MultitaskPromptEmbedding
from ..tuners.p_tuning import PromptEncoder
from ..tuners.prefix_tuning import PrefixEncoder
from ..tuners.prompt_tuning import PromptEmbedding
from ..utils.peft_types import PeftType


def build_prompt_encoder(config: PromptLearningConfig, word_embeddings: nn.Module) -> nn.Module:
    """The encoder for `config`'s method (its model-dependent fields already filled in)."""
    peft_type = config.peft_type
    if peft_type == PeftType.PROMPT_TUNING:
        return PromptEmbedding(config, word_embeddings)
    if peft_type == PeftType.CPT:
        return CPTEmbedding(config, word_embeddings)
    if peft_type == PeftType.MULTITASK_PROMPT_TUNING:
        return MultitaskPromptEmbedding(config, word_embeddings)
    if peft_type == PeftType.P_TUNING:
        return PromptEncoder(config)
    if peft_type == PeftType.PREFIX_TUNING:
        return PrefixEncoder(config)
    if peft_type == PeftType.CARTRIDGE:
        return CartridgeEncoder(config)
    raise ValueError(f"{peft_type} is not a prompt-learning method peftkit implements.")
