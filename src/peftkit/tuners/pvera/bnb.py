"""PVeRA over bitsandbytes' quantized linear layers: `Linear8bitLt` (LLM.int8()) and `Linear4bit` (nf4/fp4).

The base layer computes `base(x)` from its packed weight; the adapter's output (in the adapter's own
precision, fp32 by default) is cast to the base output's dtype and added, as peft does. Merging goes
through the framework's quantized-weight functions (`tuners/_quantized.py`): it dequantizes the weight,
adds the mean's weight change and quantizes the result again (rounded to the 4- or 8-bit grid: a warning
says so).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._bnb import bnb_layer_bits
from .._dispatch import base_of
from .._linear_kind import align_fan_in_fan_out
from .layer import Linear


class _QuantizedLinear(Linear):
    """PVeRA on a quantized linear layer."""

    bits = 0

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        return super()._adapter_output(adapter_name, x, base_result).to(base_result.dtype)


class Linear8bitLt(_QuantizedLinear):
    """PVeRA on `bitsandbytes.nn.Linear8bitLt` (int8 weights with per-row scales)."""

    bits = 8


class Linear4bit(_QuantizedLinear):
    """PVeRA on `bitsandbytes.nn.Linear4bit` (nf4 or fp4, with or without double quantization)."""

    bits = 4


def dispatch_bnb(target: nn.Module, adapter_name: str, **kwargs: Any) -> nn.Module | None:
    """The PVeRA layer for a bitsandbytes layer `target`, or None when `target` is not one."""
    base = base_of(target)
    bits = bnb_layer_bits(base)
    if bits is None:
        return None
    align_fan_in_fan_out(base, kwargs["config"])  # a linear layer: weights stored as (out, in)
    return (Linear4bit if bits == 4 else Linear8bitLt)(target, adapter_name=adapter_name, **kwargs)
