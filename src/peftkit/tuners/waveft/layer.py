"""WaveFT layers: the weight change is the inverse wavelet transform of sparse, trained coefficients.

    S = zeros(out + p, in + p) (each side made even);  S[rows_k + r0, cols_k + c0] = c_k  (k = 1..n)
    delta_W = scaling * crop(IDWT2((S_top_left, (S_top_right, S_bottom_left, S_bottom_right))))
    y = W x + b + delta_W x

`p` is what one level of reconstruction loses at the borders (filter length - 2); the locations (drawn
once from `random_loc_seed` in the out x in grid) sit centred in the padded grid, and the reconstruction
is cropped back to out x in around its centre. With `use_idwt=False`: delta_W = scaling * S (unpadded).
Only the n coefficients c (`waveft_spectrum`) train; the locations (`waveft_indices`) are re-drawn from
the seed, so they are never saved.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._linear_kind import set_linear_sizes
from .._sparse_spectrum import DenseDeltaLinear, check_coefficient_count, random_positions
from ..tuners_utils import BaseTunerLayer
from .config import WaveFTConfig
from .idwt import inverse_dwt2
from .wavelets import size_reduction


def _even(size: int) -> int:
    return size + size % 2


class WaveFTLayer(BaseTunerLayer):
    """State shared by WaveFT layer kinds: coefficients, their locations, and the transform settings."""

    adapter_layer_names = ("waveft_spectrum",)
    other_param_names = (
        "waveft_n_frequency",
        "waveft_scaling",
        "waveft_random_loc_seed",
        "waveft_wavelet_family",
        "waveft_indices",
        "waveft_use_idwt",
    )

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.waveft_spectrum = nn.ParameterDict({})
        self.waveft_n_frequency: dict[str, int] = {}
        self.waveft_scaling: dict[str, float] = {}
        self.waveft_random_loc_seed: dict[str, int] = {}
        self.waveft_wavelet_family: dict[str, str] = {}
        self.waveft_indices: dict[str, torch.Tensor] = {}
        self.waveft_use_idwt: dict[str, bool] = {}
        self.kwargs = kwargs

    def update_layer(
        self,
        adapter_name: str,
        n_frequency: int,
        config: WaveFTConfig,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create adapter `adapter_name`: draw its locations and its coefficients."""
        check_coefficient_count(n_frequency, self.out_features, self.in_features)
        self.waveft_n_frequency[adapter_name] = n_frequency
        self.waveft_scaling[adapter_name] = config.scaling
        self.waveft_random_loc_seed[adapter_name] = config.random_loc_seed
        self.waveft_wavelet_family[adapter_name] = config.wavelet_family
        self.waveft_use_idwt[adapter_name] = config.use_idwt
        self.waveft_indices[adapter_name] = random_positions(
            n_frequency, self.out_features, self.in_features, config.random_loc_seed
        )
        if config.init_weights:
            spectrum = torch.zeros(n_frequency)
        else:  # small random coefficients, from torch's global generator
            spectrum = torch.randn(n_frequency) * 0.01
        self.waveft_spectrum[adapter_name] = nn.Parameter(spectrum)
        self._finish_new_adapter(adapter_name, inference_mode)

    def reset_wave_parameters(self, adapter_name: str) -> None:
        """Zero the adapter's coefficients (a no-op adapter)."""
        if adapter_name in self.waveft_spectrum:
            with torch.no_grad():
                self.waveft_spectrum[adapter_name].zero_()

    def _delta_out_in(self, adapter: str) -> torch.Tensor:
        """`scaling * IDWT2(S)` (or `scaling * S`) as an (out, in) matrix, in the coefficients' dtype."""
        spectrum = self.waveft_spectrum[adapter]
        rows, cols = self.waveft_indices[adapter].to(spectrum.device)
        scaling = self.waveft_scaling[adapter]
        out_features, in_features = self.out_features, self.in_features
        if not self.waveft_use_idwt[adapter]:
            dense = spectrum.new_zeros(out_features, in_features)
            dense[rows, cols] = spectrum
            return dense * scaling
        family = self.waveft_wavelet_family[adapter]
        height = _even(out_features + size_reduction(family))
        width = _even(in_features + size_reduction(family))
        dense = spectrum.new_zeros(height, width)
        dense[rows + (height - out_features) // 2, cols + (width - in_features) // 2] = spectrum
        h, w = height // 2, width // 2
        delta = inverse_dwt2(dense[:h, :w], dense[:h, w:], dense[h:, :w], dense[h:, w:], family) * scaling
        top, left = (delta.shape[0] - out_features) // 2, (delta.shape[1] - in_features) // 2
        return delta[top : top + out_features, left : left + in_features]

    def __repr__(self) -> str:
        return "waveft." + super().__repr__()


class WaveFTLinear(DenseDeltaLinear, WaveFTLayer, nn.Module):
    """WaveFT on `nn.Linear` or transformers' `Conv1D` (`fan_in_fan_out=True`: weight stored as (in, out))."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: WaveFTConfig,
        n_frequency: int = 1000,
        is_target_conv_1d_layer: bool = False,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        WaveFTLayer.__init__(self, base_layer, **kwargs)
        set_linear_sizes(self, config.fan_in_fan_out, is_target_conv_1d_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, n_frequency, config)
