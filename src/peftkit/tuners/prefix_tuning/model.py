"""PrefixEncoder: the trained key/value prefixes of prefix tuning."""

from __future__ import annotations

import torch
from torch import nn

from .._model_functions import BasePromptEncoder
from .config import PrefixTuningConfig


class PrefixEncoder(BasePromptEncoder):
    """Maps virtual-token indices to a flat prefix of size `num_layers * 2 * token_dim` per token: for
    every layer its key then its value, each `num_attention_heads` heads of `token_dim /
    num_attention_heads` values.

    Without projection (or when loaded for inference) the prefix is stored directly in `embedding`; with
    `prefix_projection` it is `transform(embedding(indices))`, `transform` being
    Linear(token_dim, encoder_hidden_size) -> tanh -> Linear(encoder_hidden_size, num_layers * 2 * token_dim).
    """

    def __init__(self, config: PrefixTuningConfig) -> None:
        super().__init__()
        self.prefix_projection = config.prefix_projection and not config.inference_mode
        prefix_size = config.num_layers * 2 * config.token_dim
        zero = config.init_weights == "zero"
        if self.prefix_projection:
            self.embedding = nn.Embedding(config.num_virtual_tokens, config.token_dim)
            self.transform = nn.Sequential(
                nn.Linear(config.token_dim, config.encoder_hidden_size),
                nn.Tanh(),
                nn.Linear(config.encoder_hidden_size, prefix_size),
            )
            if zero:
                nn.init.zeros_(self.transform[2].weight)
                nn.init.zeros_(self.transform[2].bias)
        else:
            self.embedding = nn.Embedding(config.num_virtual_tokens, prefix_size)
            if zero:
                nn.init.zeros_(self.embedding.weight)

    def forward(self, prefix: torch.Tensor) -> torch.Tensor:
        if self.prefix_projection:
            return self.transform(self.embedding(prefix))
        return self.embedding(prefix)
