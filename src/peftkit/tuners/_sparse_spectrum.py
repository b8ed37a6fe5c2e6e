"""Layers whose weight change is built from n trained coefficients at seeded random positions of an
out x in grid (FourierFT's spectrum, WaveFT's wavelet coefficients), turned into a dense (out, in) matrix.

What those methods share: where the coefficients sit (the first n of a seeded permutation of the grid),
how many there may be, and that a layer applies the dense change like a weight (merging adds it in the
base weight's layout, the forward multiplies the input by it). A method states how its coefficients
become the dense change (`_delta_out_in`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_positions(n: int, out_features: int, in_features: int, seed: int | None) -> torch.Tensor:
    """(2, n) row/column indices of the trained coefficients: the first n of a random permutation of the
    out*in positions (row-major), from a CPU generator seeded with `seed` (torch's global one when None)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    # on the CPU explicitly: also under low_cpu_mem_usage's meta-device context, they are real numbers
    flat = torch.randperm(out_features * in_features, generator=generator, device="cpu")[:n]
    return torch.stack([flat // in_features, flat % in_features])


def check_coefficient_count(n_frequency: int, out_features: int, in_features: int) -> None:
    """Between 1 and out * in coefficients (peft's messages)."""
    if n_frequency <= 0:
        raise ValueError(
            f"`n_frequency` should be a positive integer value but the value passed is {n_frequency}"
        )
    if n_frequency > in_features * out_features:
        raise ValueError(
            "`n_frequency` should be less than or equal to the product of the input and output dimensions but "
            f"the value passed is {n_frequency} and the product is {in_features * out_features}"
        )


class DenseDeltaLinear:
    """Mixed into a method's `nn.Linear`/`Conv1D` layer class (before its layer base) whose adapters each
    give a dense weight change `_delta_out_in(adapter)` of shape (out, in): merging adds it in the base
    weight's layout ((in, out) for Conv1D, `fan_in_fan_out`), the forward adds `x @ delta.T`."""

    # `_delta_out_in` is the method's (on its layer base, which comes after this class in the MRO)
    fan_in_fan_out: bool

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """The weight change in the base weight's layout ((in, out) for Conv1D)."""
        delta = self._delta_out_in(adapter)
        return delta.T if self.fan_in_fan_out else delta

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        delta = self._delta_out_in(adapter_name)
        return F.linear(self._cast_input_dtype(x, delta.dtype), delta)
