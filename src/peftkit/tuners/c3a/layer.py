"""C3A layers: the weight change is a block matrix of circulant blocks, applied as circular convolutions.

The input (size in = n * b) and output (size out = m * b) are cut into blocks of size b = block_size.
Each pair of blocks (i, j) has a trained vector k_ij (`c3a_kernel`, shape (m, n, b)) and
C(k)[r, c] = k[(c - r) mod b] is its circulant matrix, so

    y_i = W_i x + (1 / in) * sum_j C(k_ij) x_j         (a circular cross-correlation of x_j with k_ij)
    delta_W = (1 / in) * [C(k_ij)]_ij                   (out x in)

The forward runs in the frequency domain, `irfft(rfft(x_j) * conj(rfft(k_ij)))`, in fp32 (FFTs of half
precision are not generally available); merging builds the circulant matrix exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .._quantized import weight_dtype
from ..tuners_utils import BaseTunerLayer
from .config import C3AConfig
from .utils import block_circular_convolution, get_circulant_fast


class C3ALayer(BaseTunerLayer):
    """State shared by C3A layer kinds: one kernel (m, n, b) and block size per adapter."""

    adapter_layer_names = ("c3a_kernel",)
    other_param_names = ("block_size",)

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.block_size: dict[str, int] = {}
        self.c3a_kernel = nn.ParameterDict({})
        self.kwargs = kwargs
        base = self.get_base_layer()
        self.in_features, self.out_features = base.in_features, base.out_features

    def update_layer(
        self,
        adapter_name: str,
        block_size: int,
        config: C3AConfig,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create adapter `adapter_name`: a kernel of (out / b, in / b, b) numbers, initialised as asked."""
        if block_size <= 0:
            raise ValueError(
                f"`block_size` should be a positive integer value but the value passed is {block_size}"
            )
        for what, size in (("input", self.in_features), ("output", self.out_features)):
            if size % block_size != 0:
                raise ValueError(
                    f"The block size should be a factor of the {what} size. However, the {what} size is {size} and "
                    f"the block size is {block_size}; pick a block_size that divides every target's input and "
                    "output size (block_size_pattern sets it per module)."
                )
        self.block_size[adapter_name] = block_size
        shape = (self.out_features // block_size, self.in_features // block_size, block_size)
        self.c3a_kernel[adapter_name] = nn.Parameter(torch.zeros(shape, dtype=torch.float32))
        self.reset_c3a_parameters(adapter_name, config.init_weights)
        self._finish_new_adapter(adapter_name, inference_mode)

    @torch.no_grad()
    def reset_c3a_parameters(self, adapter_name: str, init_weights: bool | str) -> None:
        """Zeros for True; else uniform with Xavier's bound (default, also False), Kaiming's, or N(0, 1)."""
        if init_weights is True or adapter_name not in self.c3a_kernel:
            return
        kernel = self.c3a_kernel[adapter_name]
        if init_weights == "gaussian":
            nn.init.normal_(kernel)
        elif init_weights in ("xavier_uniform", False):
            bound = math.sqrt(3.0) * math.sqrt(2.0 / (self.in_features + self.out_features))
            nn.init.uniform_(kernel, -bound, bound)
        elif init_weights == "kaiming_uniform":
            bound = math.sqrt(1.0 / self.in_features)
            nn.init.uniform_(kernel, -bound, bound)
        else:
            raise ValueError(f"Unknown init_weights: {init_weights!r}")

    def __repr__(self) -> str:
        return "c3a." + super().__repr__()


class C3ALinear(C3ALayer, nn.Module):
    """C3A on `nn.Linear`."""

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: C3AConfig, block_size: int, **kwargs: Any
    ) -> None:
        nn.Module.__init__(self)
        C3ALayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, block_size, config)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """`[C(k_ij)] / in`, built in fp32, in the base weight's dtype (as PEFT merges it)."""
        kernel = self.c3a_kernel[adapter].float()
        return (get_circulant_fast(kernel) / self.in_features).to(weight_dtype(self.get_base_layer()))

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        kernel = self.c3a_kernel[adapter_name].float()
        output = block_circular_convolution(x.float(), kernel) / self.in_features
        return output.to(base_result.dtype)  # added in the output's dtype, as PEFT does
