"""RoAd over bitsandbytes' quantized linear layers (`Linear4bit`, `Linear8bitLt`).

The forward is RoAd's: the packed base layer computes `W x + b`, which is rotated in the adapter's
precision. Merging goes through the framework's quantized-weight functions (`tuners/_quantized.py`): it works on
the dequantized weight and writes `R W` back requantized, so the merged weight is rounded to the 4- or
8-bit grid (a warning says so), as in PEFT.

bitsandbytes is never imported here: a model holding bitsandbytes layers has imported it already.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .._bnb import bnb_layer_bits
from .._dispatch import base_of
from .layer import Linear


class _QuantizedLinear(Linear):
    """RoAd on a bitsandbytes layer."""

    bits: int = 0


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
