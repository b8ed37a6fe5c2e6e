"""PromptEmbedding: the trained virtual-token embeddings of prompt tuning."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .._model_functions import BasePromptEncoder
from .config import PromptTuningConfig, PromptTuningInit


def load_init_tokenizer(config: PromptTuningConfig) -> Any:
    """The tokenizer named by the config, loaded with its `tokenizer_kwargs` (remote code only when the
    caller put `trust_remote_code` there in code; configs read from files have it stripped)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(config.tokenizer_name_or_path, **(config.tokenizer_kwargs or {}))


def text_init_token_ids(config: PromptTuningConfig, total_virtual_tokens: int) -> list[int]:
    """The token ids of `prompt_tuning_init_text`, cut to, or repeated up to, the number of virtual tokens."""
    tokenizer = load_init_tokenizer(config)
    ids = list(tokenizer(config.prompt_tuning_init_text)["input_ids"])
    if not ids:
        raise ValueError("prompt_tuning_init_text tokenises to no tokens; give a non-empty text.")
    if len(ids) < total_virtual_tokens:
        ids = ids * math.ceil(total_virtual_tokens / len(ids))
    return ids[:total_virtual_tokens]


class PromptEmbedding(BasePromptEncoder):
    """`embedding`: one trained vector per virtual token (`num_virtual_tokens * num_transformer_submodules`
    rows of size `token_dim`); `forward(indices)` looks them up.

    Args:
        config: the adapter's PromptTuningConfig (model-dependent fields filled in).
        word_embeddings: the base model's input embedding (used by TEXT and SAMPLE_VOCAB initialisation).
    """

    def __init__(self, config: PromptTuningConfig, word_embeddings: nn.Module) -> None:
        super().__init__()
        total_virtual_tokens = config.num_virtual_tokens * config.num_transformer_submodules
        self.embedding = nn.Embedding(total_virtual_tokens, config.token_dim)
        if config.inference_mode:
            return  # the weights come from a file
        init = config.prompt_tuning_init
        if init == PromptTuningInit.SAMPLE_VOCAB:
            vocab_size = word_embeddings.weight.shape[0]
            token_ids = torch.randint(0, vocab_size, (total_virtual_tokens,), dtype=torch.long)
            self._copy_from(word_embeddings, token_ids)
        elif init == PromptTuningInit.TEXT:
            token_ids = torch.tensor(text_init_token_ids(config, total_virtual_tokens), dtype=torch.long)
            self._copy_from(word_embeddings, token_ids)

    def _copy_from(self, word_embeddings: nn.Module, token_ids: torch.Tensor) -> None:
        token_ids = token_ids.to(word_embeddings.weight.device)
        with torch.no_grad():
            values = word_embeddings(token_ids).detach().clone().to(torch.float32)
            self.embedding.weight.copy_(values.to(self.embedding.weight.device))

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.embedding(indices)
