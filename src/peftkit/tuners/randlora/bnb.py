"""RandLoRA over bitsandbytes' quantized linear layers (`Linear8bitLt`, `Linear4bit`), as peft offers them.

The base layer computes `base(x)` from its packed weight; the adapter adds its output, computed in the
adapter's precision and cast to the base output's dtype before it is scaled (as peft does). Merging
dequantizes the weight, adds `delta_W` and quantizes the result again, so the merged weight is rounded
to the 4- or 8-bit grid (a warning says so).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...utils.warnings import PeftWarning
from .._bnb_weights import bnb_module, dequantized_weight, is_bnb_linear, requantized_weight
from .layer import Linear


class _QuantizedLinear(Linear):
    """RandLoRA on a quantized linear layer: merging goes through a dequantized copy of its weight."""

    bits: int = 0

    def _dense_base_weight(self) -> torch.Tensor:
        base = self.get_base_layer()
        return dequantized_weight(base) if is_bnb_linear(base) else super()._dense_base_weight()

    def _write_base_weight(self, weight: torch.Tensor) -> None:
        base = self.get_base_layer()
        if is_bnb_linear(base):
            base.weight = requantized_weight(base, weight)
        else:
            super()._write_base_weight(weight)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        if is_bnb_linear(self.get_base_layer()):
            warnings.warn(
                f"Merging RandLoRA into a {self.bits}-bit quantized layer requantizes the merged weight: outputs "
                "differ slightly from the unmerged model's, and unmerging does not restore the weight exactly.",
                PeftWarning,
                stacklevel=2,
            )
        super().merge(safe_merge=safe_merge, adapter_names=adapter_names)

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        first, second = self._factors(adapter_name, device=x.device)
        x = self._cast_input_dtype(x, second.dtype)
        hidden = F.linear(self.randlora_dropout[adapter_name](x), first)
        return F.linear(hidden, second).to(base_result.dtype) * self.scaling[adapter_name]


class Linear8bitLt(_QuantizedLinear):
    """RandLoRA on `bitsandbytes.nn.Linear8bitLt` (int8 weights with per-row scales)."""

    bits = 8


class Linear4bit(_QuantizedLinear):
    """RandLoRA on `bitsandbytes.nn.Linear4bit` (nf4 or fp4, with or without double quantization)."""

    bits = 4


def dispatch_bnb(target: nn.Module, adapter_name: str, **kwargs: Any) -> nn.Module | None:
    """The RandLoRA layer for a bitsandbytes layer `target`, or None when `target` is not one."""
    bnb = bnb_module()
    if bnb is None:
        return None
    base = target.get_base_layer() if hasattr(target, "get_base_layer") else target
    kwargs["fan_in_fan_out"] = False
    if isinstance(base, bnb.nn.Linear4bit):
        return Linear4bit(target, adapter_name=adapter_name, **kwargs)
    if isinstance(base, bnb.nn.Linear8bitLt):
        return Linear8bitLt(target, adapter_name=adapter_name, **kwargs)
    return None
