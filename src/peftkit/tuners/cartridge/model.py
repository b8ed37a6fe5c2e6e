"""CartridgeEncoder: a Cartridge's key/value prefix, held as parameters."""

from __future__ import annotations

import torch
from torch import nn

from .config import CartridgeConfig


class _WeightView:
    """`encoder.embedding.weight` for code written against prefix tuning's `PrefixEncoder` (a plain
    object, so it adds nothing to the module tree or the state dict)."""

    def __init__(self, encoder: CartridgeEncoder) -> None:
        self._encoder = encoder

    @property
    def weight(self) -> torch.Tensor:
        return self._encoder.weight


class CartridgeEncoder(nn.Module):
    """The prefix of `num_virtual_tokens` tokens, in prefix tuning's flat layout: one row per virtual
    token of `num_layers * 2 * token_dim` values (per layer its key, then its value, each
    `num_attention_heads` heads). The first `num_frozen_tokens` rows are `frozen_embedding` (never
    trained), the rest `trainable_embedding`; both start as N(0, 1), like an `nn.Embedding`."""

    def __init__(self, config: CartridgeConfig) -> None:
        super().__init__()
        self.config = config
        total = config.num_virtual_tokens
        frozen = int(config.num_frozen_tokens)
        if not 0 <= frozen <= total:
            raise ValueError(
                f"`num_frozen_tokens` must be in [0, num_virtual_tokens], got {frozen} for num_virtual_tokens={total}."
            )
        width = config.num_layers * 2 * config.token_dim
        self.num_frozen_tokens = frozen
        self.num_trainable_tokens = total - frozen
        self.frozen_embedding = (
            nn.Parameter(torch.empty(frozen, width), requires_grad=False) if frozen else None
        )
        self.trainable_embedding = nn.Parameter(
            torch.empty(self.num_trainable_tokens, width), requires_grad=not config.inference_mode
        )
        self.reset_parameters()

    @property
    def weight(self) -> torch.Tensor:
        """The whole prefix, (num_virtual_tokens, num_layers * 2 * token_dim)."""
        if self.frozen_embedding is None:
            return self.trainable_embedding
        return torch.cat([self.frozen_embedding, self.trainable_embedding], dim=0)

    @property
    def embedding(self) -> _WeightView:
        """A view with `.weight`, the interface of `PrefixEncoder.embedding`."""
        return _WeightView(self)

    def reset_parameters(self) -> None:
        """Both parts ~ N(0, 1) (frozen part drawn first, as PEFT draws them)."""
        with torch.no_grad():
            if self.frozen_embedding is not None:
                nn.init.normal_(self.frozen_embedding)
            nn.init.normal_(self.trainable_embedding)

    def load_prompt_embeddings(self, prompt_embeddings: torch.Tensor) -> None:
        """Fill the prefix from a flat (num_virtual_tokens, num_layers * 2 * token_dim) tensor (what files
        hold as `prompt_embeddings`), split into the frozen and the trained part."""
        expected = (self.num_frozen_tokens + self.num_trainable_tokens, self.trainable_embedding.shape[1])
        if tuple(prompt_embeddings.shape) != expected:
            raise ValueError(
                f"Invalid `prompt_embeddings` shape: this Cartridge holds {expected} (num_virtual_tokens, "
                f"num_layers * 2 * token_dim), got {tuple(prompt_embeddings.shape)}. Was it made for another model "
                "or another num_virtual_tokens?"
            )
        with torch.no_grad():
            if self.frozen_embedding is not None:
                self.frozen_embedding.copy_(prompt_embeddings[: self.num_frozen_tokens])
            self.trainable_embedding.copy_(prompt_embeddings[self.num_frozen_tokens :])

    def forward(self, prefix_tokens: torch.Tensor) -> torch.Tensor:
        """The prefix for every sample of the batch (the token indices only give the batch size)."""
        return self.weight.unsqueeze(0).expand(prefix_tokens.shape[0], -1, -1)
