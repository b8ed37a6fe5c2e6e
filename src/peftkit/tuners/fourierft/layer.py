"""FourierFT layers: the weight change is the inverse 2-D DFT of a sparse, trained spectrum.

    S = zeros(out, in);  S[rows_k, cols_k] = c_k   (k = 1..n, locations drawn once from a seed)
    delta_W = scaling * Re(IDFT2(S))
    y = W x + b + delta_W x

Only the `n` coefficients `c` (`fourierft_spectrum`) train; the locations (`indices`) are re-drawn from
`random_loc_seed`, so they are never saved.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._quantized import weight_shape
from ..tuners_utils import BaseTunerLayer
from .config import FourierFTConfig


def frequency_locations(
    n_frequency: int, out_features: int, in_features: int, seed: int | None
) -> torch.Tensor:
    """(2, n) row/column indices of the trained coefficients: the first n of a random permutation of the
    out*in positions (row-major), from a CPU generator seeded with `seed` (global RNG when None)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    # on the CPU explicitly: also under low_cpu_mem_usage's meta-device context, they are real numbers
    flat = torch.randperm(out_features * in_features, generator=generator, device="cpu")[:n_frequency]
    return torch.stack([flat // in_features, flat % in_features])


class FourierFTLayer(BaseTunerLayer):
    """State shared by FourierFT layer kinds: spectra, their locations, sizes and scalings."""

    adapter_layer_names = ("fourierft_spectrum",)
    other_param_names = ("fourierft_n_frequency", "fourierft_scaling", "fourierft_random_loc_seed", "indices")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.fourierft_spectrum = nn.ParameterDict({})
        self.fourierft_n_frequency: dict[str, int] = {}
        self.fourierft_scaling: dict[str, float] = {}
        self.fourierft_random_loc_seed: dict[str, int | None] = {}
        self.indices: dict[str, torch.Tensor] = {}
        self.kwargs = kwargs

    def update_layer(
        self,
        adapter_name: str,
        n_frequency: int,
        config: FourierFTConfig,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create adapter `adapter_name`: draw its locations and its spectrum."""
        if n_frequency <= 0:
            raise ValueError(
                f"`n_frequency` should be a positive integer value but the value passed is {n_frequency}"
            )
        if n_frequency > self.in_features * self.out_features:
            raise ValueError(
                "`n_frequency` should be less than or equal to the product of the input and output dimensions but "
                f"the value passed is {n_frequency} and the product is {self.in_features * self.out_features}"
            )
        self.fourierft_n_frequency[adapter_name] = n_frequency
        self.fourierft_scaling[adapter_name] = config.scaling
        self.fourierft_random_loc_seed[adapter_name] = config.random_loc_seed
        self.indices[adapter_name] = frequency_locations(
            n_frequency, self.out_features, self.in_features, config.random_loc_seed
        )
        self.fourierft_spectrum[adapter_name] = nn.Parameter(torch.empty(n_frequency))
        self.reset_fourier_parameters(adapter_name, config.init_weights)
        self._finish_new_adapter(adapter_name, inference_mode)
        spectrum = self.fourierft_spectrum[adapter_name]
        if not spectrum.is_meta:
            self.indices[adapter_name] = self.indices[adapter_name].to(spectrum.device)

    def reset_fourier_parameters(self, adapter_name: str, init_weights: bool = False) -> None:
        if adapter_name not in self.fourierft_spectrum:
            return
        with torch.no_grad():
            if init_weights:
                self.fourierft_spectrum[adapter_name].zero_()
            else:
                self.fourierft_spectrum[adapter_name].normal_()

    def __repr__(self) -> str:
        return "fourierft." + super().__repr__()


class FourierFTLinear(FourierFTLayer, nn.Module):
    """FourierFT on `nn.Linear` or transformers' `Conv1D` (`fan_in_fan_out=True`: weight stored as (in, out))."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: FourierFTConfig,
        n_frequency: int = 1000,
        is_target_conv_1d_layer: bool = False,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        FourierFTLayer.__init__(self, base_layer, **kwargs)
        self.fan_in_fan_out = config.fan_in_fan_out
        self.is_target_conv_1d_layer = is_target_conv_1d_layer
        shape = weight_shape(base_layer)  # as numbers: a 4-bit weight is stored packed
        self.out_features, self.in_features = shape[::-1] if self.fan_in_fan_out else shape
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, n_frequency, config)

    def _delta_out_in(self, adapter: str) -> torch.Tensor:
        """`scaling * Re(IDFT2(S))` as an (out, in) matrix, in the spectrum's dtype."""
        spectrum = self.fourierft_spectrum[adapter]
        indices = self.indices[adapter].to(spectrum.device)
        dense = torch.zeros(self.out_features, self.in_features, device=spectrum.device, dtype=spectrum.dtype)
        dense[indices[0], indices[1]] = spectrum
        return torch.fft.ifft2(dense).real * self.fourierft_scaling[adapter]

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """The weight change in the base weight's layout ((in, out) for Conv1D)."""
        delta = self._delta_out_in(adapter)
        return delta.T if self.fan_in_fan_out else delta

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        delta = self._delta_out_in(adapter_name)
        return F.linear(self._cast_input_dtype(x, delta.dtype), delta)
