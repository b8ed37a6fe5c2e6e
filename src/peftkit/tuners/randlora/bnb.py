"""RandLoRA over bitsandbytes' quantized linear layers (`Linear8bitLt`, `Linear4bit`), as peft offers them.

The base layer computes `base(x)` from its packed weight; the adapter adds its output, computed in the
adapter's precision and cast to the base output's dtype before it is scaled (as peft does). Merging goes
through the framework's quantized-weight functions (`tuners/_quantized.py`): it dequantizes the weight,
adds `delta_W` and quantizes the result again, so the merged weight is rounded to the 4- or 8-bit grid
(a warning says so).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._bnb import bnb_layer_bits
from .._dispatch import base_of
from .layer import Linear


class _QuantizedLinear(Linear):
    """RandLoRA on a quantized linear layer."""

    bits: int = 0

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
    bits = bnb_layer_bits(base_of(target))
    if bits is None:
        return None
    kwargs["fan_in_fan_out"] = False
    return (Linear4bit if bits == 4 else Linear8bitLt)(target, adapter_name=adapter_name, **kwargs)
