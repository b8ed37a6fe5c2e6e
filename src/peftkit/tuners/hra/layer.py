"""HRA layers: the weight is multiplied on its input side by a chain of Householder reflections.

    W' = W H_1 H_2 ... H_r,    H_i = I - 2 u_i u_i^T / |u_i|^2        (u_i: columns of `hra_u`)
    W' = W (I - 2 Q Q^T),      Q = Gram-Schmidt(u_1 .. u_r)            (with `apply_GS`)

A convolution's kernel is flattened to (out, in * kh * kw) first. The product is orthogonal, so
unmerging multiplies by its transpose (the reflections in reverse order). The framework computes the
forward through the adapted weight (`adapts_weight_in_forward`) and does the merge bookkeeping.

The reflections are applied to W one at a time (`W - 2 (W u) u^T`: O(out * in * r)) instead of forming
H first (O(in^2 * r + out * in^2) per forward, as PEFT does); in fp32 the results agree to ~1e-7. The
rotation is computed in fp32 even for half-precision vectors (`autocast_adapter_dtype=False`), where
PEFT computes in bf16/fp16: there the outputs differ at half-precision rounding level.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from ...utils.warnings import PeftWarning
from .._quantized import weight_shape
from ..tuners_utils import BaseTunerLayer
from .config import HRAConfig


def gram_schmidt(vectors: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning `vectors`' columns, in order (modified Gram-Schmidt: each projection is
    taken off the partly orthogonalised vector, which is the more stable variant and what PEFT computes)."""
    columns: list[torch.Tensor] = []
    for i in range(vectors.shape[1]):
        v = vectors[:, i]
        for q in columns:
            v = v - (q @ v) * q
        columns.append(v / v.norm())
    return torch.stack(columns, dim=1)


class HRALayer(BaseTunerLayer):
    """State shared by HRA layer kinds: the reflection vectors `hra_u` (in_dim x r) per adapter."""

    adapter_layer_names = ("hra_u",)
    other_param_names = ("hra_r", "hra_apply_GS")
    adapts_weight_in_forward = True

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.hra_r: dict[str, int] = {}
        self.hra_apply_GS: dict[str, bool] = {}
        self.hra_u = nn.ParameterDict({})
        self.kwargs = kwargs

    def update_layer(
        self, adapter_name: str, r: int, config: HRAConfig, inference_mode: bool = False, **kwargs: Any
    ) -> None:
        """Create adapter `adapter_name` with `r` reflections of this layer's input dimension."""
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        self.hra_r[adapter_name] = r
        self.hra_apply_GS[adapter_name] = config.apply_GS
        self.hra_u[adapter_name] = nn.Parameter(torch.empty(self._input_dim(), r))
        self.reset_hra_parameters(adapter_name, config.init_weights)
        self._finish_new_adapter(adapter_name, inference_mode)

    def reset_hra_parameters(self, adapter_name: str, init_weights: bool = True) -> None:
        """Kaiming-uniform vectors; with `init_weights` and an even r they come in equal pairs, so each pair
        of reflections cancels and the adapter starts as the identity."""
        if adapter_name not in self.hra_u:
            return
        u = self.hra_u[adapter_name]
        r = self.hra_r[adapter_name]
        with torch.no_grad():
            if init_weights and r % 2 == 0:
                half = torch.empty(u.shape[0], r // 2, device=u.device, dtype=u.dtype)
                nn.init.kaiming_uniform_(half, a=math.sqrt(5))
                u.copy_(half.repeat_interleave(2, dim=1))
                return
            if init_weights:
                warnings.warn("The symmetric initialization can NOT be performed when r is odd!", PeftWarning)
            nn.init.kaiming_uniform_(u, a=math.sqrt(5))

    def _input_dim(self) -> int:
        """The size of the weight's flattened input side (what the reflections act on)."""
        return weight_shape(self.get_base_layer())[1:].numel()  # a 4-bit weight is stored packed

    def _rotate(self, weight: torch.Tensor, adapter_name: str, reverse: bool = False) -> torch.Tensor:
        """`weight @ H` (or `weight @ H^T` with `reverse`) for a 2-D weight, in fp32, one reflection at a time."""
        u = self.hra_u[adapter_name].float()
        weight = weight.float()
        if self.hra_apply_GS[adapter_name]:
            q = gram_schmidt(u)
            return weight - 2 * (weight @ q) @ q.T  # I - 2 Q Q^T is symmetric: its own transpose
        u = u / u.norm(dim=0)
        order = range(u.shape[1] - 1, -1, -1) if reverse else range(u.shape[1])
        for i in order:
            column = u[:, i : i + 1]
            weight = weight - 2 * (weight @ column) @ column.T
        return weight

    def get_delta_weight(self, adapter_name: str, reverse: bool = False) -> torch.Tensor:
        """The rotation `H` itself (in_dim x in_dim; `H^T` with `reverse`): HRA multiplies, it does not add."""
        eye = torch.eye(self._input_dim(), device=self.hra_u[adapter_name].device)
        return self._rotate(eye, adapter_name, reverse)

    def _merged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        flat = weight.reshape(weight.shape[0], -1)
        return self._rotate(flat, adapter_name).reshape(weight.shape)

    def _unmerged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        flat = weight.reshape(weight.shape[0], -1)
        return self._rotate(flat, adapter_name, reverse=True).reshape(weight.shape)

    def __repr__(self) -> str:
        return "hra." + super().__repr__()


class HRALinear(HRALayer, nn.Module):
    """HRA on `nn.Linear`: `y = x (W H)^T + b`."""

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: HRAConfig, r: int = 0, **kwargs: Any
    ):
        nn.Module.__init__(self)
        HRALayer.__init__(self, base_layer, **kwargs)
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, config)


class HRAConv2d(HRALayer, nn.Module):
    """HRA on `nn.Conv2d`: the reflections act on the flattened (in_channels * kh * kw) kernel side."""

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: HRAConfig, r: int = 0, **kwargs: Any
    ):
        nn.Module.__init__(self)
        HRALayer.__init__(self, base_layer, **kwargs)
        self.in_features, self.out_features = base_layer.in_channels, base_layer.out_channels
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, config)
