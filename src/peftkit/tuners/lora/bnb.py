"""LoRA (and DoRA) over bitsandbytes' quantized linear layers: `Linear4bit` (nf4/fp4, double quant) and
`Linear8bitLt` (QLoRA, LLM.int8()).

The base layer computes `base(x)` from its packed weight; the adapter adds `s * B A x` in the adapter's
own precision (fp32 by default), cast to the base output's dtype as peft does. Whatever needs the weight
as numbers (DoRA's norm, merging) goes through the framework's quantized-weight functions
(`tuners/_quantized.py`, `tuners/_bnb.py`): merging dequantizes, merges and requantizes (a warning says
the result is rounded to the 4- or 8-bit grid); `peftkit.utils.quantization.merge_and_unload_dequantized`
merges into a plain floating-point model instead.
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
    """LoRA on a quantized linear layer."""

    bits: int = 0
    # as PEFT does over bitsandbytes: the adapter's output is cast to the base output's dtype, then added
    casts_adapter_output = True

    def _apply_base_weight(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._dense_base_weight().to(x.dtype))


class Linear4bit(_QuantizedLinear):
    """LoRA on `bitsandbytes.nn.Linear4bit` (nf4 or fp4, with or without double quantization)."""

    bits = 4


class Linear8bitLt(_QuantizedLinear):
    """LoRA on `bitsandbytes.nn.Linear8bitLt` (int8 weights with per-row scales)."""

    bits = 8


def dispatch_bnb(target: nn.Module, adapter_name: str, **kwargs: Any) -> nn.Module | None:
    """The LoRA layer for a bitsandbytes layer `target`, or None when `target` is not one."""
    bits = bnb_layer_bits(base_of(target))
    if bits is None:
        return None
    kwargs.pop("fan_in_fan_out", None)
    return (Linear4bit if bits == 4 else Linear8bitLt)(target, adapter_name, **kwargs)
