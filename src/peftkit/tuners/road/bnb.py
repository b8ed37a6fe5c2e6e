"""RoAd over bitsandbytes' quantized linear layers (`Linear4bit`, `Linear8bitLt`).

The forward is RoAd's: the packed base layer computes `W x + b`, which is rotated in the adapter's
precision. Merging works on the dequantized weight and writes `R W` back requantized, so the merged
weight is rounded to the 4- or 8-bit grid (a warning says so), as in PEFT.

bitsandbytes is never imported here: a model holding bitsandbytes layers has imported it already.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ...utils.warnings import PeftWarning
from .._bnb import bnb_layer_bits, dequantized_weight, requantized_weight
from .._dispatch import base_of
from ..tuners_utils import _as_list
from .layer import Linear


class _QuantizedLinear(Linear):
    """RoAd on a bitsandbytes layer: merging dequantizes the base weight and requantizes the result."""

    bits: int = 0

    def _dense_base_weight(self) -> torch.Tensor:
        return dequantized_weight(self.get_base_layer())

    def _write_base_weight(self, weight: torch.Tensor) -> None:
        base = self.get_base_layer()
        base.weight = requantized_weight(base, weight)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        names = self.active_adapters if adapter_names is None else _as_list(adapter_names)
        if any(n not in self.merged_adapters and self.has_adapter(n) for n in names):
            warnings.warn(
                f"Merging RoAd into a {self.bits}-bit quantized layer requantizes the rotated weight: the merged "
                "model's outputs differ slightly from the unmerged one's (rounding).",
                PeftWarning,
                stacklevel=2,
            )
        super().merge(safe_merge=safe_merge, adapter_names=adapter_names)

    def unmerge(self) -> None:
        if self.merged_adapters:
            warnings.warn(
                f"Unmerging RoAd from a {self.bits}-bit quantized layer requantizes the weight: it is not exactly "
                "the weight before the merge.",
                PeftWarning,
                stacklevel=2,
            )
        super().unmerge()


class Linear4bit(_QuantizedLinear):
    """RoAd on `bitsandbytes.nn.Linear4bit`."""

    bits = 4


class Linear8bitLt(_QuantizedLinear):
    """RoAd on `bitsandbytes.nn.Linear8bitLt`."""

    bits = 8


def dispatch_bnb(target: nn.Module, adapter_name: str, **kwargs: Any) -> nn.Module | None:
    """The RoAd layer for a bitsandbytes layer `target`, or None when `target` is not one."""
    bits = bnb_layer_bits(base_of(target))
    if bits is None:
        return None
    layer_cls = Linear4bit if bits == 4 else Linear8bitLt
    return layer_cls(target, adapter_name, **kwargs)
