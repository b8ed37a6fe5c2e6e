"""AdaLoRA layers: an SVD-shaped low-rank update whose singular values `E` can be pruned.

    y = base(x) + dropout(x) (A * E)^T B^T * lora_alpha / (ranknum + 1e-5)

`A: (r, in)` and `B: (out, r)` play the singular vectors, `E: (r, 1)` the singular values; `ranknum` (a
frozen parameter, not saved) is the rank the layer started with, so pruning triplets (zeroing entries of
`E`, or dropping them when a pruned adapter is loaded) leaves the scale of the others unchanged. For
`nn.Conv2d`, `A` is `(r, C*k*k)` and the delta `B (A * E)`, reshaped to the kernel, is applied as a
convolution with the base layer's stride and padding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .._dropout import input_dropout
from .._quantized import weight_shape
from ..lora.layer import LoraLayer, _in_out_features


class AdaLoraLayer(LoraLayer, nn.Module):
    """State of an AdaLoRA layer: `lora_A`, `lora_B`, `lora_E` and the frozen `ranknum` per adapter."""

    adapter_layer_names = ("lora_A", "lora_B", "lora_E", "lora_embedding_A", "lora_embedding_B")
    other_param_names = ("r", "lora_alpha", "scaling", "lora_dropout", "ranknum")

    def __init__(self, base_layer: nn.Module, adapter_name: str, fan_in_fan_out: bool = False, **kwargs: Any):
        nn.Module.__init__(self)
        LoraLayer.__init__(self, base_layer)
        self.lora_A = nn.ParameterDict({})
        self.lora_B = nn.ParameterDict({})
        self.lora_E = nn.ParameterDict({})
        self.ranknum = nn.ParameterDict({})
        self.fan_in_fan_out = fan_in_fan_out
        self.in_features, self.out_features = _in_out_features(self.get_base_layer())
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, **kwargs)

    def update_layer(
        self,
        adapter_name: str,
        r: int,
        lora_alpha: float,
        lora_dropout: float = 0.0,
        init_lora_weights: bool | str = True,
        ranknum: int | None = None,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create adapter `adapter_name` with rank `r` (0 allowed: a layer whose triplets were all pruned);
        `ranknum` is the rank the scale refers to (default `r`)."""
        if r < 0:
            raise ValueError(f"`r` should be a positive integer or 0, but the value passed is {r}")
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha if lora_alpha > 0 else float(r)
        self.lora_dropout[adapter_name] = input_dropout(lora_dropout)
        in_dim = self.in_features * math.prod(weight_shape(self.get_base_layer())[2:])
        self.lora_A[adapter_name] = nn.Parameter(torch.randn(r, in_dim))
        self.lora_E[adapter_name] = nn.Parameter(torch.randn(r, 1))
        self.lora_B[adapter_name] = nn.Parameter(torch.randn(self.out_features, r))
        weight = self.get_base_layer().weight
        device = None if weight.is_meta else weight.device  # never on meta: the file does not hold it
        self.ranknum[adapter_name] = nn.Parameter(
            torch.full((1,), float(r if ranknum is None else ranknum), device=device), requires_grad=False
        )
        if init_lora_weights:
            self.reset_lora_parameters(adapter_name, init_lora_weights)
        self._finish_new_adapter(adapter_name, inference_mode)

    def reset_lora_parameters(self, adapter_name: str, init_lora_weights: bool | str = True) -> None:
        """E = 0 (the adapter starts as a no-op), A and B normal with std 0.02."""
        if adapter_name in self.lora_A:
            nn.init.zeros_(self.lora_E[adapter_name])
            nn.init.normal_(self.lora_A[adapter_name], mean=0.0, std=0.02)
            nn.init.normal_(self.lora_B[adapter_name], mean=0.0, std=0.02)

    def _scale(self, adapter_name: str) -> torch.Tensor:
        return self.scaling[adapter_name] / (self.ranknum[adapter_name] + 1e-5)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """`B (A * E) * lora_alpha / (ranknum + 1e-5)`, in the base weight's layout."""
        delta = self.lora_B[adapter_name] @ (self.lora_A[adapter_name] * self.lora_E[adapter_name])
        delta = delta * self._scale(adapter_name)
        if self.fan_in_fan_out:
            delta = delta.T
        return delta.reshape(weight_shape(self.get_base_layer()))

    # AdaLoRA's scale is lora_alpha (the rank enters through ranknum), not lora_alpha / r
    def set_scale(self, adapter: str, scale: float) -> None:
        if adapter in self.scaling:
            self.scaling[adapter] = scale * self.lora_alpha[adapter]

    def unscale_layer(self, scale: float | None = None) -> None:
        for adapter in self.active_adapters:
            if adapter in self.scaling:
                self.scaling[adapter] = (
                    self.lora_alpha[adapter] if scale is None else self.scaling[adapter] / scale
                )

    def __repr__(self) -> str:
        return "adalora." + super().__repr__()


class SVDLinear(AdaLoraLayer):
    """AdaLoRA on `nn.Linear` or transformers' `Conv1D` (`fan_in_fan_out=True`)."""

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        lora_A, lora_B, lora_E = (getattr(self, n)[adapter_name] for n in ("lora_A", "lora_B", "lora_E"))
        x = self._cast_input_dtype(x, lora_A.dtype)
        hidden = self.lora_dropout[adapter_name](x) @ (lora_A * lora_E).T
        return hidden @ lora_B.T * self._scale(adapter_name)


class SVDConv2d(AdaLoraLayer):
    """AdaLoRA on `nn.Conv2d`: the delta kernel is convolved with the (dropped-out) input."""

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        delta = self.get_delta_weight(adapter_name)
        x = self._cast_input_dtype(self.lora_dropout[adapter_name](x), delta.dtype)
        return self.get_base_layer()._conv_forward(x, delta, None)
