"""Lily layers: a low-rank update whose up-projection is a routed mix of experts shared across layers.

    h = A x                                           (A: r x in, shared by `stride_A` consecutive layers)
    p = mean over every token of the batch of softmax(R h)   (R: num_B x r, this layer's router)
    delta = scaling * h @ sum_e p_e B_e               (B_e: r x out, the experts of all layers of one target)
    y = W x + b + delta

`lily_B` stores the experts stacked as one (num_B * r, out) matrix. The router weights are averaged
over the whole batch, so a sample's output depends on the other samples: the weight change is not fixed,
which is why Lily cannot be merged. In a mixed-adapter batch each adapter routes over its own samples
(the output they would get as a batch of their own). Which layers share A and B is decided by the tuner
(`sharing.py`): a layer holds the shared modules themselves, so they appear under every layer's name.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..tuners_utils import BaseTunerLayer
from .config import LilyConfig

_NOT_MERGEABLE = (
    "Lily cannot be merged: its router averages over the batch, so its weight change depends on the input. "
    "Keep the adapter unmerged (unload() removes it without merging)."
)


class LilyLayer(BaseTunerLayer):
    """State of a Lily layer: its (possibly shared) A and B modules and its own router, per adapter."""

    adapter_layer_names = ("lily_A", "lily_B", "lily_router")
    other_param_names = ("r", "scaling", "stride_A", "num_B")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.stride_A: dict[str, int] = {}
        self.num_B: dict[str, int] = {}
        self.lily_A = nn.ModuleDict({})
        self.lily_B = nn.ModuleDict({})
        self.lily_router = nn.ModuleDict({})
        base = self.get_base_layer()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.kwargs = kwargs

    def update_layer(
        self,
        adapter_name: str,
        r: int,
        config: LilyConfig,
        lily_A: nn.Linear | None = None,
        lily_B: nn.Linear | None = None,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create adapter `adapter_name`: this layer's own A, B and router (or the given A and B).

        The three are built in peft's order and re-initialised as peft does, so a seeded run draws the same
        numbers; the tuner then replaces A and B by the ones the layer shares.
        """
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        self.r[adapter_name] = r
        self.scaling[adapter_name] = config.scaling
        self.stride_A[adapter_name] = config.stride_A
        self.num_B[adapter_name] = config.num_B
        self.lily_A[adapter_name] = (
            lily_A if lily_A is not None else nn.Linear(self.in_features, r, bias=False)
        )
        self.lily_B[adapter_name] = (
            lily_B if lily_B is not None else nn.Linear(self.out_features, config.num_B * r, bias=False)
        )
        self.lily_router[adapter_name] = nn.Linear(r, config.num_B, bias=False)
        self.reset_lily_parameters(adapter_name, config.init_weights)
        self._finish_new_adapter(adapter_name, inference_mode)

    def reset_lily_parameters(self, adapter_name: str, init_weights: bool = True) -> None:
        """A and the router Kaiming-uniform (a = sqrt(5)); B zero, or Kaiming-uniform with `init_weights=False`."""
        if adapter_name not in self.lily_A:
            return
        nn.init.kaiming_uniform_(self.lily_A[adapter_name].weight, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.lily_router[adapter_name].weight, a=math.sqrt(5))
        if init_weights:
            nn.init.zeros_(self.lily_B[adapter_name].weight)
        else:
            nn.init.kaiming_uniform_(self.lily_B[adapter_name].weight, a=math.sqrt(5))

    def __repr__(self) -> str:
        return "lily." + super().__repr__()


class Linear(LilyLayer, nn.Module):
    """Lily on `nn.Linear`."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        r: int,
        config: LilyConfig,
        lily_A: nn.Linear | None = None,
        lily_B: nn.Linear | None = None,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        LilyLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, config, lily_A=lily_A, lily_B=lily_B)

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        lily_A, lily_B = self.lily_A[adapter_name], self.lily_B[adapter_name]
        num_B = self.num_B[adapter_name]
        hidden = lily_A(self._cast_input_dtype(x, lily_A.weight.dtype))
        routing = F.softmax(self.lily_router[adapter_name](hidden), dim=-1)
        expert_weights = routing.reshape(-1, num_B).mean(dim=0)
        experts = lily_B.weight.reshape(num_B, -1, lily_B.weight.shape[1])  # (num_B, r, out)
        combined_B = torch.einsum("e,eio->io", expert_weights, experts)
        # in the base output's dtype before adding, as peft adds it
        return (torch.matmul(hidden, combined_B) * self.scaling[adapter_name]).to(base_result.dtype)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        raise NotImplementedError(_NOT_MERGEABLE)

    def _check_mergeable(self) -> None:
        raise NotImplementedError(_NOT_MERGEABLE)
