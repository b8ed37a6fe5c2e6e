"""LoRA (and DoRA) over bitsandbytes' quantized linear layers: `Linear4bit` (nf4/fp4, double quant) and
`Linear8bitLt` (QLoRA, LLM.int8()), under peft's class names.

Merging dequantizes, merges and requantizes (a warning says the result is rounded to the 4- or 8-bit
grid); `peftkit.utils.quantization.merge_and_unload_dequantized` merges into a plain floating-point model
instead.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .._bnb import bnb_layer_bits
from .._dispatch import base_of
from .quantized_linear import QuantizedLinear


class Linear4bit(QuantizedLinear):
    """LoRA on `bitsandbytes.nn.Linear4bit` (nf4 or fp4, with or without double quantization)."""

    bits = 4


class Linear8bitLt(QuantizedLinear):
    """LoRA on `bitsandbytes.nn.Linear8bitLt` (int8 weights with per-row scales)."""

    bits = 8


def dispatch_bnb(target: nn.Module, adapter_name: str, **kwargs: Any) -> nn.Module | None:
    """The LoRA layer for a bitsandbytes layer `target`, or None when `target` is not one."""
    bits = bnb_layer_bits(base_of(target))
    if bits is None:
        return None
    kwargs.pop("fan_in_fan_out", None)
    return (Linear4bit if bits == 4 else Linear8bitLt)(target, adapter_name, **kwargs)
