"""LN tuning's layer: a trainable copy of the targeted module stands in for it while the adapter is on.

    y = copy_a(x)        with adapter `a` active (the copy starts equal to the base module)
    y = base(x)          when adapters are disabled

Merging swaps the copy into the `base_layer` slot (and the original into the adapter slot), so only one
adapter can be merged or active at a time.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..tuners_utils import BaseTunerLayer
from .config import LNTuningConfig


class LNTuningLayer(BaseTunerLayer, nn.Module):
    """Holds one trained copy of the base module per adapter in `ln_tuning_layers`."""

    adapter_layer_names = ("ln_tuning_layers",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LNTuningConfig) -> None:
        nn.Module.__init__(self)
        self._init_tuner_layer(base_layer)
        self.ln_tuning_layers = nn.ModuleDict({})
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(
        self,
        adapter_name: str,
        config: LNTuningConfig | None = None,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Add adapter `adapter_name`: a copy of the original module (even while another one is merged)."""
        original = self.ln_tuning_layers[self.merged_adapters[0]] if self.merged_adapters else self.base_layer
        self.ln_tuning_layers[adapter_name] = copy.deepcopy(original)
        self._mark_new_adapter_trainable(adapter_name, inference_mode)

    def cast_adapter_dtype(self, adapter_name: str, dtype: torch.dtype = torch.float32) -> None:
        """The copies keep the base module's dtype (as PEFT does): they replace it, they do not add to it."""

    # ----- forward: the active copy replaces the base module -----
    def _mixed_batch_by_group(self) -> bool:
        return True

    def _forward_with(self, active: list[str], x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if len(active) > 1:
            raise ValueError(
                f"Trying to run forward with {len(active)} active adapters, but LN tuning does not allow inference "
                "with more than one adapter at a time; activate a single adapter with set_adapter(name)."
            )
        layer = self.ln_tuning_layers[active[0]] if active else self.base_layer
        return layer(x, *args, **kwargs)

    # ----- merging: swap the copy into the base slot -----
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        names = [n for n in self._adapters_to_merge(adapter_names) if self.has_adapter(n)]
        if not names:
            return
        if len(names) > 1:
            raise ValueError(
                f"Trying to merge {len(names)} adapters, but LN tuning does not allow merging more than one adapter "
                "at a time; merge a single adapter (adapter_names=[name])."
            )
        name = names[0]
        if safe_merge and not all(torch.isfinite(p).all() for p in self.ln_tuning_layers[name].parameters()):
            raise ValueError(
                f"NaNs or infs found in the weights of adapter '{name}': the adapter seems broken, so the base "
                "module was left unchanged."
            )
        if self.merged_adapters:
            self.unmerge()
        self._swap(name)
        self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged_adapters:
            super().unmerge()  # warns that there is nothing to do
            return
        self._swap(self.merged_adapters.pop())

    def _swap(self, adapter_name: str) -> None:
        self.base_layer, self.ln_tuning_layers[adapter_name] = (
            self.ln_tuning_layers[adapter_name],
            self.base_layer,
        )

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise ValueError(
                f"Cannot delete adapter(s) ['{adapter_name}'] while they are merged. Please unmerge them first."
            )
        super().delete_adapter(adapter_name)

    def __repr__(self) -> str:
        return "ln_tuning." + super().__repr__()
