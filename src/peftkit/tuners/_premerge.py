"""`PremergeWeightMixin`: merging for methods whose weight change is a function of the base weight.

For GLoRA (`delta = W0 * A + B`) or PEANuT (`delta = f(W0)`), the change must always be computed from the
original weight `W0`, not from a weight that already has other adapters merged into it. While anything is
merged, the layer keeps a copy of the original weight and bias (on the CPU, as PEFT keeps PEANuT's), so
that every merged adapter adds `delta(W0)`, and unmerging the last adapter restores `W0` exactly.

On a quantized base (bitsandbytes), `W0` is the dequantized weight: the stored one is packed integers, which
are not the weight's numbers (a 4-bit weight is not even shaped like it). A merge then requantizes, as for
every method (`_quantized.py`).

A layer mixes this class in before its `BaseTunerLayer` base and computes its change from
`self._premerge_weight()` / `self._premerge_bias()` in `get_delta_weight` / `_bias_delta`.
"""

from __future__ import annotations

import torch

from ._quantized import quantization_backend, weight_dtype


class PremergeWeightMixin:
    """Keeps the pre-merge base weight and bias while adapters are merged (see the module docstring)."""

    _premerge_snapshot: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def _premerge_weight(self) -> torch.Tensor:
        """The base weight without any merged adapter (the live weight when nothing is merged)."""
        base = self.get_base_layer()
        if self._premerge_snapshot is None:
            return base.weight if quantization_backend(base) is None else self._dense_base_weight()
        return self._premerge_snapshot[0].to(device=base.weight.device, dtype=weight_dtype(base))

    def _premerge_bias(self) -> torch.Tensor | None:
        """The base bias without any merged adapter (None when the base layer has none)."""
        live = getattr(self.get_base_layer(), "bias", None)
        if live is None or self._premerge_snapshot is None:
            return live
        return self._premerge_snapshot[1].to(device=live.device, dtype=live.dtype)

    def _merged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        if not self.merged_adapters:  # the first adapter merged: remember the original weights
            bias = getattr(self.get_base_layer(), "bias", None)
            self._premerge_snapshot = (
                weight.detach().clone().cpu(),
                None if bias is None else bias.detach().clone().cpu(),
            )
        return weight.float() + self.get_delta_weight(adapter_name).float()

    def _unmerged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        # the framework takes `adapter_name` off `merged_adapters` first: none left means it was the last
        if not self.merged_adapters and self._premerge_snapshot is not None:
            return self._premerge_weight()
        return weight.float() - self.get_delta_weight(adapter_name).float()

    def _unmerged_bias(self, adapter_name: str) -> torch.Tensor | None:
        # called after `_unmerged_weight` of the same adapter: the last one releases the snapshot
        if not self.merged_adapters and self._premerge_snapshot is not None:
            bias = self._premerge_bias()
            self._premerge_snapshot = None
            return bias
        return super()._unmerged_bias(adapter_name)
