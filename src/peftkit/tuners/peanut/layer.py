"""PEANuT layers: the weight change is a small network applied to the base weight itself.

    h_0 = act(W0^T A^T)                                   (in, r): one row per input feature
    e_i = act(h_{i-1} Enc_i^T),  h_i = e_i                i = 1..depth  (h_{i-1} kept as a residual)
    d_i = act(d_{i-1} Dec_i^T) + h_{depth-i}              i = 1..depth  (d_0 = h_depth)
    delta_W = scaling * (d_depth B^T)^T                   (out, in)
    y = W0 x + b + delta_W x

A (r x out), B (out x r) and the `depth` encoder and decoder layers (r x r) are the trained tensors; the
change is recomputed from W0 in every forward. Merging uses the original W0 for every merged adapter
(kept aside while merged, see `PremergeWeightMixin`), as PEFT does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .._premerge import PremergeWeightMixin
from ..tuners_utils import BaseTunerLayer
from .config import PeanutConfig


def _activation(name: str):
    from transformers.activations import ACT2FN  # transformers loads on first use, not on `import peftkit`

    return ACT2FN[name]


class PeanutLayer(PremergeWeightMixin, BaseTunerLayer):
    """State of PEANuT layers: each adapter's network (A, encoders, decoders, B) and its settings."""

    adapter_layer_names = ("peanut_A", "peanut_B", "peanut_encoders", "peanut_decoders")
    other_param_names = ("r", "depth", "scaling", "act_fn", "res_num")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.r: dict[str, int] = {}
        self.depth: dict[str, int] = {}
        self.res_num: dict[str, int] = {}  # PEFT's name for the number of residual blocks (= depth)
        self.scaling: dict[str, float] = {}
        self.act_fn: dict[str, str] = {}
        self.peanut_A = nn.ModuleDict({})
        self.peanut_B = nn.ModuleDict({})
        self.peanut_encoders = nn.ModuleDict({})
        self.peanut_decoders = nn.ModuleDict({})
        self.kwargs = kwargs

    def update_layer(
        self, adapter_name: str, r: int, config: PeanutConfig, inference_mode: bool = False, **kwargs: Any
    ) -> None:
        """Create adapter `adapter_name`'s network (modules built in PEFT's order, so a seeded init draws
        the same numbers)."""
        depth = config.depth
        self.r[adapter_name] = r
        self.depth[adapter_name] = self.res_num[adapter_name] = depth
        self.scaling[adapter_name] = config.scaling
        self.act_fn[adapter_name] = config.act_fn
        self.peanut_A[adapter_name] = nn.Linear(self.out_features, r, bias=False)
        self.peanut_encoders[adapter_name] = nn.ModuleList(
            [nn.Linear(r, r, bias=False) for _ in range(depth)]
        )
        self.peanut_decoders[adapter_name] = nn.ModuleList(
            [nn.Linear(r, r, bias=False) for _ in range(depth)]
        )
        self.peanut_B[adapter_name] = nn.Linear(r, self.out_features, bias=False)
        self.reset_peanut_parameters(adapter_name, init_weights=config.init_weights)
        self._finish_new_adapter(adapter_name, inference_mode)

    def reset_peanut_parameters(self, adapter_name: str, init_weights: bool = True) -> None:
        """Kaiming-uniform A, encoders and decoders; B zero (the adapter starts as a no-op) unless
        `init_weights=False`."""
        if adapter_name not in self.peanut_A:
            return
        layers = [self.peanut_A[adapter_name], *self.peanut_encoders[adapter_name]]
        layers += list(self.peanut_decoders[adapter_name])
        with torch.no_grad():
            for layer in layers:
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
            if init_weights:
                nn.init.zeros_(self.peanut_B[adapter_name].weight)
            else:
                nn.init.kaiming_uniform_(self.peanut_B[adapter_name].weight, a=math.sqrt(5))

    def __repr__(self) -> str:
        return "peanut." + super().__repr__()


class Linear(PeanutLayer, nn.Module):
    """PEANuT on `nn.Linear`."""

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, r: int, config: PeanutConfig, **kwargs: Any
    ) -> None:
        nn.Module.__init__(self)
        PeanutLayer.__init__(self, base_layer, **kwargs)
        base = self.get_base_layer()
        self.in_features, self.out_features = base.in_features, base.out_features
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, config)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """`scaling * net(W0^T)^T` (out, in), in the adapter's dtype, from the original weight W0."""
        act = _activation(self.act_fn[adapter_name])
        A = self.peanut_A[adapter_name]
        hidden = act(self._premerge_weight().T.to(A.weight.dtype) @ A.weight.T)
        residuals = []
        for encoder in self.peanut_encoders[adapter_name]:
            residuals.append(hidden)
            hidden = act(encoder(hidden))
        for decoder in self.peanut_decoders[adapter_name]:
            hidden = act(decoder(hidden)) + residuals.pop()
        return (self.peanut_B[adapter_name](hidden) * self.scaling[adapter_name]).T

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        delta = self.get_delta_weight(adapter_name)
        return (self._cast_input_dtype(x, delta.dtype) @ delta.T).to(base_result.dtype)
