"""PveraModel: the PVeRA tuner. It owns the shared random projections (one pair per adapter)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._dispatch import CONV1D
from .._shared_projections import SharedProjectionTuner, kaiming_pair
from .bnb import dispatch_bnb
from .config import PveraConfig
from .layer import Linear, PveraLayer


class PveraModel(SharedProjectionTuner):
    """Adds PVeRA to `nn.Linear` and transformers' `Conv1D` layers, and to bitsandbytes' 8-bit and 4-bit
    linear layers.

    `pvera_A` / `pvera_B` (BufferDicts on this tuner, referenced by every layer) hold each adapter's
    projections, drawn for its own rank and largest targeted layer (so adapters of any ranks and targets
    live side by side). With `save_projection=True` they are saved as `base_model.pvera_A` /
    `base_model.pvera_B`; otherwise they are re-drawn from `projection_prng_key`.

    Example:
        >>> from peftkit import PveraConfig, get_peft_model
        >>> model = get_peft_model(model, PveraConfig(r=128, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "pvera_lambda_"
    uses_shared_state = True  # its layers need the tuner's shared tensors (PEFT sets it too)
    tuner_layer_cls = PveraLayer
    layer_classes = {nn.Linear: Linear, CONV1D: Linear}
    layer_dispatchers = (dispatch_bnb,)
    projection_names = ("pvera_A", "pvera_B")
    method_label = "PVeRA"

    def _draw_projections(
        self, config: PveraConfig, out_features: int, in_features: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A (2r x in) and B (out x r), Kaiming-uniform from `projection_prng_key`."""
        return kaiming_pair(config.projection_prng_key, (2 * config.r, in_features), (out_features, config.r))

    def _layer_kwargs(self, config: PveraConfig, key: str) -> dict[str, Any]:
        return {"pvera_A": self.pvera_A, "pvera_B": self.pvera_B, "r": config.r, "config": config}
