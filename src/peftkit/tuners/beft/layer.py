"""BEFT layers: a trained bias on a linear layer's output.

    y = W x + b + beta_1 + ... + beta_k        (beta_a: adapter a's vector, stored as (1, out_features))

The weight never changes. Merging adds `beta` to the base layer's bias (and unmerging subtracts it), so
a base layer without a bias cannot be merged: that is an error naming the layer, and a warning says so
when the adapter is created.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ...utils.warnings import PeftWarning
from ..tuners_utils import BaseTunerLayer
from .config import BeftConfig


class BeftLayer(BaseTunerLayer):
    """State of a BEFT layer: one trained bias vector per adapter (`beft_bias`)."""

    adapter_layer_names = ("beft_bias",)

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.beft_bias = nn.ParameterDict({})
        base = self.get_base_layer()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.kwargs = kwargs

    def update_layer(
        self, adapter_name: str, config: BeftConfig, inference_mode: bool = False, **kwargs: Any
    ) -> None:
        """Create adapter `adapter_name`: a (1, out_features) bias, zero unless `init_weights=False`."""
        if self.get_base_layer().bias is None:
            warnings.warn(
                "The base layer has no bias: BEFT works in the forward pass, but the adapter cannot be merged "
                "into it (merging adds BEFT's bias to the layer's own).",
                PeftWarning,
            )
        # drawn even when then zeroed, so that seeded runs consume torch's global RNG as in peft
        self.beft_bias[adapter_name] = nn.Parameter(torch.randn(1, self.out_features))
        if config.init_weights:
            self.reset_beft_parameters(adapter_name)
        self._finish_new_adapter(adapter_name, inference_mode)

    def reset_beft_parameters(self, adapter_name: str) -> None:
        """Zero the bias of `adapter_name` (the adapter becomes a no-op)."""
        if adapter_name in self.beft_bias:
            nn.init.zeros_(self.beft_bias[adapter_name])


class Linear(BeftLayer, nn.Module):
    """BEFT on `nn.Linear`."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: BeftConfig, **kwargs: Any) -> None:
        nn.Module.__init__(self)
        BeftLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        return self.beft_bias[adapter_name].flatten()

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """BEFT leaves the weight alone: zeros (its change is to the bias, see `_bias_delta`)."""
        return torch.zeros_like(self.get_base_layer().weight)

    def _check_mergeable(self) -> None:
        if self.get_base_layer().bias is None:
            raise ValueError(
                f"BEFT cannot merge into {self.get_base_layer()}: merging adds the adapter's bias to the base "
                "layer's bias, and this layer has none. Keep the adapter unmerged (or use unload())."
            )

    def _merged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def _unmerged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def _bias_delta(self, adapter_name: str) -> torch.Tensor:
        return self.beft_bias[adapter_name].detach().flatten()
