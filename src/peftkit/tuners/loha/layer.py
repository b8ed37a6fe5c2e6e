"""LoHa layers: `dW = (alpha / r) * (W1a W1b) ⊙ (W2a W2b)` (⊙: elementwise), on Linear/Conv1d/Conv2d.

Shapes: `W1a, W2a: (out, r)`, `W1b, W2b: (r, in * prod(kernel))`. In the Tucker ("effective conv") form
each factor is `rebuild_tucker(T, Wa, Wb)` with `T: (r, r, *kernel)`, `Wa: (r, out)`, `Wb: (r, in)`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..lycoris_utils import LycorisLayer, kaiming_init, rebuild_tucker


class LoHaLayer(LycorisLayer):
    """The LoHa factors of each adapter; the framework adds `op(x, dW)` to the base output."""

    adapter_layer_names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")

    def create_adapter_parameters(
        self, adapter_name: str, r: int, use_effective_conv2d: bool = False, **kwargs: Any
    ) -> None:
        out_dim, in_dim, kernel = self.out_features, self.weight_in_features, self.kernel_size
        if self._uses_tucker(use_effective_conv2d):
            core = kernel if len(kernel) == 2 else (*kernel, 1)  # Conv1d: a (k, 1) core
            for i in ("1", "2"):
                self._new_parameter(f"hada_t{i}", adapter_name, r, r, *core)
                self._new_parameter(f"hada_w{i}_a", adapter_name, r, out_dim)
                self._new_parameter(f"hada_w{i}_b", adapter_name, r, in_dim)
            return
        flat_in = in_dim * math.prod(kernel)
        for i in ("1", "2"):
            self._new_parameter(f"hada_w{i}_a", adapter_name, out_dim, r)
            self._new_parameter(f"hada_w{i}_b", adapter_name, r, flat_in)

    def reset_adapter_parameters(self, adapter_name: str, init_weights: bool | str) -> None:
        """Every factor kaiming-uniform; with `init_weights`, `W2b = 0` so the adapter starts as a no-op."""
        kaiming_init(
            *(
                getattr(self, n)[adapter_name]
                for n in self.adapter_layer_names
                if adapter_name in getattr(self, n)
            )
        )
        if init_weights:
            nn.init.zeros_(self.hada_w2_b[adapter_name])

    def _factor(self, adapter_name: str, i: str) -> torch.Tensor:
        w_a, w_b = getattr(self, f"hada_w{i}_a")[adapter_name], getattr(self, f"hada_w{i}_b")[adapter_name]
        core = getattr(self, f"hada_t{i}")
        if adapter_name in core:
            return rebuild_tucker(core[adapter_name], w_a, w_b)
        return w_a @ w_b

    def _unscaled_delta(self, adapter_name: str) -> torch.Tensor:
        return self._factor(adapter_name, "1") * self._factor(adapter_name, "2")

    def __repr__(self) -> str:
        return "loha." + super().__repr__()


class Linear(LoHaLayer):
    """LoHa on `nn.Linear`."""


class Conv1d(LoHaLayer):
    """LoHa on `nn.Conv1d`."""


class Conv2d(LoHaLayer):
    """LoHa on `nn.Conv2d`."""
