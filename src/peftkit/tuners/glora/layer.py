"""GLoRA layers: a generalised change of both the weight and the bias of a linear layer.

    W' = W0 + W0 * A + B                  (* elementwise; A, B broadcast to (out, in))
    b' = b0 + b0 * D + E + W0 @ C         (C: (in, 1); D, E broadcast to (out,))
    y  = x W'^T + b'  =  W0 x + b0 + [x (W0 * A + B)^T + b0 * D + E + W0 @ C]

The bracket is what the adapter adds (the bias terms only when the base layer has a bias; C, D and E are
then zeros). Each of A..E is a "path" whose form the config picks: `lora` (`Xd @ Xu`, rank r), `vector`
(`X`, one value per row), `constant` (`X[0]`) or `none` (a saved zero buffer, as PEFT saves it).

The change depends on W0 itself, so merging computes every adapter's change from the original weight
(kept aside while merged, see `PremergeWeightMixin`), as PEFT does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._premerge import PremergeWeightMixin
from ..tuners_utils import BaseTunerLayer
from .config import GloraConfig


class GloraLoraPath(nn.Module):
    """`Xd @ Xu`, Xd (rows, r) and Xu (r, cols): Xu Kaiming-uniform, Xd zero (a no-op) unless
    `init_weights=False`."""

    def __init__(self, rows: int, cols: int, r: int, init_weights: bool = True) -> None:
        super().__init__()
        self.Xd = nn.Parameter(torch.zeros(rows, r))
        self.Xu = nn.Parameter(torch.zeros(r, cols))
        nn.init.kaiming_uniform_(self.Xu, a=math.sqrt(5))
        if not init_weights:
            nn.init.kaiming_uniform_(self.Xd, a=math.sqrt(5))

    def forward(self) -> torch.Tensor:
        return self.Xd @ self.Xu


class GloraVectorPath(nn.Module):
    """`X`, one value per feature: a column (features, 1) that broadcasts along rows, or a flat (features,)
    vector for the bias terms. Zero, or Kaiming-uniform with `init_weights=False`."""

    def __init__(self, features: int, is_column: bool = True, init_weights: bool = True) -> None:
        super().__init__()
        self.X = nn.Parameter(torch.zeros((features, 1) if is_column else (features,)))
        if not init_weights:  # a flat vector is drawn as one row, so its fan-in is `features`
            nn.init.kaiming_uniform_(self.X if is_column else self.X.unsqueeze(0), a=math.sqrt(5))

    def forward(self) -> torch.Tensor:
        return self.X


class GloraScalarPath(nn.Module):
    """One trained scalar `X[0]`: zero, or N(0, 0.02^2) with `init_weights=False`."""

    def __init__(self, init_weights: bool = True) -> None:
        super().__init__()
        self.X = nn.Parameter(torch.zeros(1))
        if not init_weights:
            nn.init.normal_(self.X, mean=0.0, std=0.02)

    def forward(self) -> torch.Tensor:
        return self.X[0]


class GloraEmptyPath(nn.Module):
    """A path switched off: a zero buffer of the path's full shape (saved with the adapter, as in PEFT)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("zeros", torch.zeros(shape))

    def forward(self) -> torch.Tensor:
        return self.zeros


def _weight_path(kind: str, out_features: int, in_features: int, r: int, init: bool) -> nn.Module:
    """A or B, broadcasting to the (out, in) weight."""
    if kind == "lora":
        return GloraLoraPath(out_features, in_features, r, init)
    if kind == "vector":
        return GloraVectorPath(out_features, is_column=True, init_weights=init)
    if kind == "constant":
        return GloraScalarPath(init)
    return GloraEmptyPath((out_features, in_features))


def _coupling_path(kind: str, in_features: int, r: int, init: bool) -> nn.Module:
    """C, an (in, 1) column: the bias gets `W0 @ C`."""
    if kind == "lora":
        return GloraLoraPath(in_features, 1, r, init)
    if kind == "vector":
        return GloraVectorPath(in_features, is_column=True, init_weights=init)
    return GloraEmptyPath((in_features, 1))


def _bias_path(kind: str, out_features: int, init: bool) -> nn.Module:
    """D or E, broadcasting to the (out,) bias."""
    if kind == "vector":
        return GloraVectorPath(out_features, is_column=False, init_weights=init)
    if kind == "constant":
        return GloraScalarPath(init)
    return GloraEmptyPath((out_features,))


class GloraLayer(PremergeWeightMixin, BaseTunerLayer):
    """State of GLoRA layers: the five paths of every adapter."""

    adapter_layer_names = ("glora_A", "glora_B", "glora_C", "glora_D", "glora_E")
    other_param_names = ("r",)

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.r: dict[str, int] = {}
        self.glora_A = nn.ModuleDict({})
        self.glora_B = nn.ModuleDict({})
        self.glora_C = nn.ModuleDict({})
        self.glora_D = nn.ModuleDict({})
        self.glora_E = nn.ModuleDict({})
        self.kwargs = kwargs

    def update_layer(
        self, adapter_name: str, r: int, config: GloraConfig, inference_mode: bool = False, **kwargs: Any
    ) -> None:
        """Create adapter `adapter_name`'s paths (in PEFT's order A, B, C, D, E, so a seeded random init
        draws the same numbers). Without a base bias, C, D and E are switched off whatever the config says."""
        self.r[adapter_name] = r
        init = config.init_weights
        out_features, in_features = self.out_features, self.in_features
        self.glora_A[adapter_name] = _weight_path(config.config_A_B, out_features, in_features, r, init)
        self.glora_B[adapter_name] = _weight_path(config.config_A_B, out_features, in_features, r, init)
        has_bias = self.bias is not None
        self.glora_C[adapter_name] = _coupling_path(
            config.config_C if has_bias else "none", in_features, r, init
        )
        bias_kind = config.config_D_E if has_bias else "none"
        self.glora_D[adapter_name] = _bias_path(bias_kind, out_features, init)
        self.glora_E[adapter_name] = _bias_path(bias_kind, out_features, init)
        self._finish_new_adapter(adapter_name, inference_mode)

    def _paths(self, adapter_name: str, like: torch.Tensor) -> list[torch.Tensor]:
        """A, B, C, D, E of `adapter_name`, on the device and in the dtype of `like` (as PEFT casts them)."""
        return [
            getattr(self, name)[adapter_name]().to(device=like.device, dtype=like.dtype)
            for name in self.adapter_layer_names
        ]

    def __repr__(self) -> str:
        return "glora." + super().__repr__()


class GloraLinear(GloraLayer, nn.Module):
    """GLoRA on a plain `nn.Linear`."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: GloraConfig, **kwargs: Any) -> None:
        nn.Module.__init__(self)
        GloraLayer.__init__(self, base_layer, **kwargs)
        base = self.get_base_layer()
        self.in_features, self.out_features = base.in_features, base.out_features
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config.r, config)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """`W0 * A + B`, from the original weight W0."""
        weight = self._premerge_weight()
        A, B, *_ = self._paths(adapter_name, weight)
        return weight * A + B

    def _bias_delta(self, adapter_name: str) -> torch.Tensor | None:
        """`b0 * D + E + W0 @ C` (None without a base bias)."""
        bias = self._premerge_bias()
        if bias is None:
            return None
        weight = self._premerge_weight()
        _, _, C, D, E = self._paths(adapter_name, weight)
        return bias * D + E + (weight @ C).squeeze(-1)

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        delta = self.get_delta_weight(adapter_name)
        output = F.linear(self._cast_input_dtype(x, delta.dtype), delta)
        bias_delta = self._bias_delta(adapter_name)
        return output if bias_delta is None else output + bias_delta
