"""PromptEncoder: P-tuning's virtual tokens, computed from trained embeddings by an MLP or an LSTM."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .._model_functions import BasePromptEncoder
from .config import PromptEncoderConfig, PromptEncoderReparameterizationType


class PromptEncoder(BasePromptEncoder):
    """`forward(indices)` = `mlp_head(embedding(indices))` (MLP), or
    `mlp_head(lstm_head(embedding(indices)))` (LSTM).

    MLP: Linear(token_dim, h) -> ReLU -> Linear(h, h) -> ReLU -> Linear(h, token_dim).
    LSTM: a bidirectional LSTM (token_dim -> h, `encoder_num_layers` layers), then
    Linear(2h, 2h) -> ReLU -> Linear(2h, token_dim). `h` is `encoder_hidden_size`.
    Loaded for inference, only `embedding` exists: it holds the computed tokens.
    """

    def __init__(self, config: PromptEncoderConfig) -> None:
        super().__init__()
        self.token_dim = config.token_dim
        self.input_size = config.token_dim
        self.output_size = config.token_dim
        self.hidden_size = config.encoder_hidden_size
        self.total_virtual_tokens = config.num_virtual_tokens * config.num_transformer_submodules
        self.encoder_type = config.encoder_reparameterization_type
        self.embedding = nn.Embedding(self.total_virtual_tokens, self.token_dim)
        if config.inference_mode:
            return
        hidden = self.hidden_size
        if self.encoder_type == PromptEncoderReparameterizationType.LSTM:
            self.lstm_head = nn.LSTM(
                input_size=self.input_size,
                hidden_size=hidden,
                num_layers=config.encoder_num_layers,
                dropout=config.encoder_dropout,
                bidirectional=True,
                batch_first=True,
            )
            self.mlp_head = nn.Sequential(
                nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, self.output_size)
            )
        else:
            if config.encoder_num_layers != 2:
                warnings.warn(
                    f"for {self.encoder_type.value}, the argument `encoder_num_layers` is ignored. "
                    "Exactly 2 MLP layers are used."
                )
            self.mlp_head = nn.Sequential(
                nn.Linear(self.input_size, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, self.output_size),
            )

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        embeds = self.embedding(indices)
        if not hasattr(self, "mlp_head"):  # loaded for inference: the embedding holds the result
            return embeds
        if self.encoder_type == PromptEncoderReparameterizationType.LSTM:
            return self.mlp_head(self.lstm_head(embeds)[0])
        return self.mlp_head(embeds)
