"""DoRA's learned magnitude: one scale per output channel of the adapted weight.

The adapted weight is `m * V / ||V||` with `V = W + s * B A`; `||V||` is the L2 norm over everything but
the output channel. The module holds `m` as its `weight` parameter, so the state-dict key is
`lora_magnitude_vector.<adapter>.weight` as in PEFT.
"""

from __future__ import annotations

import torch
from torch import nn

# A row of zeros would divide by zero; its magnitude starts at zero too, so the scale is 0, not NaN.
_MIN_NORM = 1e-12


def channel_norm(weight_out_first: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """L2 norm of each output channel (dim 0) of a weight, reshaped to `shape`."""
    norm = weight_out_first.flatten(1).norm(p=2, dim=1).clamp_min(_MIN_NORM)
    return norm.reshape(shape)


class MagnitudeVector(nn.Module):
    """Holds DoRA's magnitude `m` (initialised to the base weight's channel norms)."""

    def __init__(self, initial_norm: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(initial_norm.clone(), requires_grad=True)
