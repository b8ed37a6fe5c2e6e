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
from torch import nn

from .._linear_kind import set_linear_sizes
from .._sparse_spectrum import DenseDeltaLinear, check_coefficient_count, random_positions
from ..tuners_utils import BaseTunerLayer
from .config import FourierFTConfig


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
        check_coefficient_count(n_frequency, self.out_features, self.in_features)
        self.fourierft_n_frequency[adapter_name] = n_frequency
        self.fourierft_scaling[adapter_name] = config.scaling
        self.fourierft_random_loc_seed[adapter_name] = config.random_loc_seed
        self.indices[adapter_name] = random_positions(
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


class FourierFTLinear(DenseDeltaLinear, FourierFTLayer, nn.Module):
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
        set_linear_sizes(self, config.fan_in_fan_out, is_target_conv_1d_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, n_frequency, config)

    def _delta_out_in(self, adapter: str) -> torch.Tensor:
        """`scaling * Re(IDFT2(S))` as an (out, in) matrix, in the spectrum's dtype."""
        spectrum = self.fourierft_spectrum[adapter]
        indices = self.indices[adapter].to(spectrum.device)
        dense = torch.zeros(self.out_features, self.in_features, device=spectrum.device, dtype=spectrum.dtype)
        dense[indices[0], indices[1]] = spectrum
        return torch.fft.ifft2(dense).real * self.fourierft_scaling[adapter]
