"""CPTEmbedding: CPT's virtual tokens, the context's embeddings plus a projected, trained change.

    prompt_i = E[cpt_token_ids_i] + delta_i,    delta_i <- delta_i * min(1, eps_i / |delta_i|)

`embedding` (frozen) holds the context's embeddings, `delta_embedding` the change. The projection onto
the ball of radius eps_i runs at every forward (eps = opt_projection_format_epsilon for template roles,
opt_projection_epsilon for input roles, both scaled by sqrt(token_dim / 2048), and ~0 otherwise). Only
template and input tokens (roles 4k+1, 4k+2, 4k+3) receive gradients; label tokens stay as they are.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .._model_functions import BasePromptEncoder
from .config import CPTConfig
from .loss import cpt_loss

_MIN_EPSILON = 1e-10


class CPTEmbedding(BasePromptEncoder):
    """The virtual tokens of one CPT adapter; `forward(indices)` looks them up (projecting the change first).

    Args:
        config: the adapter's CPTConfig (model-dependent fields filled in).
        word_embeddings: the base model's input embedding; the context's rows start the prompt (in training).
    """

    def __init__(self, config: CPTConfig, word_embeddings: nn.Module) -> None:
        super().__init__()
        self.config = copy.deepcopy(config)
        count = config.num_virtual_tokens
        self.embedding = nn.Embedding(count, config.token_dim)
        if not config.inference_mode:  # for inference the embeddings come from a file
            ids = torch.tensor(config.cpt_token_ids, dtype=torch.long, device=word_embeddings.weight.device)
            with torch.no_grad():
                context = word_embeddings(ids).detach().clone().to(torch.float32)
            self.embedding.weight = nn.Parameter(context)
        self.embedding.requires_grad_(False)
        self.delta_embedding = nn.Embedding(count, config.token_dim)
        self.delta_embedding.weight.data = torch.zeros_like(self.delta_embedding.weight, dtype=torch.float32)
        roles = torch.tensor(config.cpt_tokens_type_mask, dtype=torch.long) % 4
        self.register_buffer("_trained_rows", (roles != 0).view(-1, 1), persistent=False)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """The virtual tokens at `indices`; gradients reach only the template and input tokens' change."""
        with torch.no_grad():
            prompt = self.embedding(indices)
        self.delta_embedding.weight.data = self.get_projection()
        weight = self.delta_embedding.weight
        trained = self._trained_rows.to(weight.device)
        masked = torch.where(trained, weight, weight.detach())  # same values; label rows get no gradient
        return prompt + nn.functional.embedding(indices, masked)

    def get_epsilon(self) -> torch.Tensor:
        """The projection radius of each virtual token, by its role."""
        roles = torch.tensor(self.config.cpt_tokens_type_mask, dtype=torch.long)
        scale = torch.sqrt(torch.tensor(self.config.token_dim / 2048, dtype=torch.float32))
        epsilon = torch.full(roles.shape, _MIN_EPSILON, dtype=torch.float32)
        template = (roles > 0) & ((roles % 4 == 1) | (roles % 4 == 3))
        epsilon[template] = self.config.opt_projection_format_epsilon * scale
        epsilon[(roles > 0) & (roles % 4 == 2)] = self.config.opt_projection_epsilon * scale
        return epsilon

    def get_projection(self) -> torch.Tensor:
        """The change with every non-zero row scaled back into its ball (a copy; no gradient)."""
        with torch.no_grad():
            delta = self.delta_embedding.weight.clone()
            norms = torch.linalg.vector_norm(delta, dim=1)
            moved = norms > 0
            if moved.any():
                epsilon = self.get_epsilon().to(delta.device)[moved]
                delta[moved] *= (epsilon / norms[moved].clamp(min=epsilon)).unsqueeze(1)
            return delta

    @staticmethod
    def calculate_loss(
        base_model_output, labels: torch.Tensor, cpt_type_mask: torch.Tensor, config: CPTConfig
    ):
        """Replace `base_model_output.loss` by CPT's loss (see `loss.py`) and return the output."""
        base_model_output.loss = cpt_loss(base_model_output.logits, labels, cpt_type_mask, config)
        return base_model_output
