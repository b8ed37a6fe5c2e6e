"""VeraModel: the VeRA tuner. It owns the shared random projections (one pair per adapter)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._dispatch import CONV1D
from .._shared_projections import SharedProjectionTuner, kaiming_pair
from .config import VeraConfig
from .layer import Linear, VeraLayer


class VeraModel(SharedProjectionTuner):
    """Adds VeRA to `nn.Linear` and transformers' `Conv1D` layers.

    `vera_A` / `vera_B` (BufferDicts on this tuner, referenced by every layer) hold each adapter's
    projections, sized for the largest targeted layer. With `save_projection=True` they are saved as
    `base_model.vera_A` / `base_model.vera_B`; otherwise they are re-drawn from `projection_prng_key`.

    Example:
        >>> from peftkit import VeraConfig, get_peft_model
        >>> model = get_peft_model(model, VeraConfig(r=128, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "vera_lambda_"
    uses_shared_state = True  # its layers need the tuner's shared tensors (PEFT sets it too)
    tuner_layer_cls = VeraLayer
    layer_classes = {nn.Linear: Linear, CONV1D: Linear}
    projection_names = ("vera_A", "vera_B")
    method_label, key_label = "VeRA", "Vera"  # as peft's messages spell them
    # adapters share one key: pairs of the same shape hold the same numbers, kept once (as peft does)
    shares_equal_projections = True

    def _draw_projections(
        self, config: VeraConfig, out_features: int, in_features: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A (r x in) and B (out x r), Kaiming-uniform from `projection_prng_key`."""
        return kaiming_pair(config.projection_prng_key, (config.r, in_features), (out_features, config.r))

    def _layer_kwargs(self, config: VeraConfig, key: str) -> dict[str, Any]:
        return {"vera_A": self.vera_A, "vera_B": self.vera_B, "r": config.r, "config": config}
