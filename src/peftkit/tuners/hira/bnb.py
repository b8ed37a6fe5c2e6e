"""HiRA over bitsandbytes' quantized linear layers (`Linear4bit`, `Linear8bitLt`).

The base layer computes `base(x)` from its packed weight; the adapter adds `(W0 * B A) x` with W0
dequantized, in the adapter's precision, cast to the base output's dtype before it is added (as PEFT
does). Merging writes `W0 + W0 * (B A)` back *requantized*, so the merged weight is rounded to the 4- or
8-bit grid (a warning says so); unmerging the last adapter requantizes the dequantized W0 kept at the
first merge.

bitsandbytes is never imported here: a model holding bitsandbytes layers has imported it already.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ...utils.warnings import PeftWarning
from .._bnb import dequantized_weight, is_bnb_4bit_layer, is_bnb_layer, requantized_weight
from .._dispatch import base_of
from .layer import Linear

_ROUNDING_WARNING = (
    "Merging HiRA into a {bits}-bit quantized layer dequantizes the weight, adds the adapter and quantizes the "
    "result again: the merged weight is rounded to the {bits}-bit grid, so outputs differ slightly from the "
    "unmerged model's."
)


class _QuantizedLinear(Linear):
    """HiRA on a quantized linear layer: W0 is read dequantized and written back requantized."""

    bits: int = 0

    def _base_weight(self) -> torch.Tensor:
        return self._dense_base_weight()

    def _dense_base_weight(self) -> torch.Tensor:
        base = self.get_base_layer()
        return dequantized_weight(base) if is_bnb_layer(base) else super()._dense_base_weight()

    def _write_base_weight(self, weight: torch.Tensor) -> None:
        base = self.get_base_layer()
        if is_bnb_layer(base):
            base.weight = requantized_weight(base, weight)
        else:  # dequantized in place by the caller
            super()._write_base_weight(weight)

    def _modulation(self, adapter_name: str) -> torch.Tensor:
        return self.hira_B[adapter_name] @ self.hira_A[adapter_name]  # PEFT's bitsandbytes layers' rounding

    def _apply_adapter(
        self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, base_result: torch.Tensor
    ) -> torch.Tensor:
        return result + self._adapter_output(adapter_name, x, base_result).to(result.dtype)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        names = self.active_adapters if adapter_names is None else adapter_names
        names = [names] if isinstance(names, str) else names
        pending = any(self.has_adapter(n) and n not in self.merged_adapters for n in names)
        if pending and is_bnb_layer(self.get_base_layer()):
            warnings.warn(_ROUNDING_WARNING.format(bits=self.bits), PeftWarning, stacklevel=2)
        super().merge(safe_merge=safe_merge, adapter_names=adapter_names)


class Linear4bit(_QuantizedLinear):
    """HiRA on `bitsandbytes.nn.Linear4bit` (nf4 or fp4, with or without double quantization)."""

    bits = 4


class Linear8bitLt(_QuantizedLinear):
    """HiRA on `bitsandbytes.nn.Linear8bitLt` (int8 weights with per-row scales)."""

    bits = 8


def dispatch_bnb(target: nn.Module, adapter_name: str, **kwargs: Any) -> nn.Module | None:
    """The HiRA layer for a bitsandbytes layer `target`, or None when `target` is not one."""
    base = base_of(target)
    if not is_bnb_layer(base):
        return None
    kwargs.pop("fan_in_fan_out", None)  # the packed weight is always (out, in)
    layer_cls = Linear4bit if is_bnb_4bit_layer(base) else Linear8bitLt
    return layer_cls(target, adapter_name, **kwargs)
