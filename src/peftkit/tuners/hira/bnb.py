"""HiRA over bitsandbytes' quantized linear layers (`Linear4bit`, `Linear8bitLt`), under PEFT's class names.

The base layer computes `base(x)` from its packed weight; the adapter adds `(W0 * B A) x` with W0 read
through the framework's one quantized-weight module (`_quantized.py`: dequantized), in the adapter's
precision, cast to the base output's dtype before it is added (as PEFT does). Merging and unmerging are
the framework's too: dequantize, merge `W0 + W0 * (B A)`, requantize with the layer's own settings (a
warning says the weight is rounded to the grid); unmerging the last adapter requantizes the dequantized
W0 kept at the first merge.

bitsandbytes is never imported here: a model holding bitsandbytes layers has imported it already.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._bnb import bnb_layer_bits
from .._dispatch import base_of
from .layer import Linear


class _QuantizedLinear(Linear):
    """HiRA on a bitsandbytes linear layer: only the rounding of PEFT's bitsandbytes layers differs."""

    def _modulation(self, adapter_name: str) -> torch.Tensor:
        return self.hira_B[adapter_name] @ self.hira_A[adapter_name]  # PEFT's bitsandbytes layers' rounding

    def _apply_adapter(
        self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, base_result: torch.Tensor
    ) -> torch.Tensor:
        return result + self._adapter_output(adapter_name, x, base_result).to(result.dtype)


class Linear4bit(_QuantizedLinear):
    """HiRA on `bitsandbytes.nn.Linear4bit` (nf4 or fp4, with or without double quantization)."""


class Linear8bitLt(_QuantizedLinear):
    """HiRA on `bitsandbytes.nn.Linear8bitLt` (int8 weights with per-row scales)."""


def dispatch_bnb(target: nn.Module, adapter_name: str, **kwargs: Any) -> nn.Module | None:
    """The HiRA layer for a bitsandbytes layer `target`, or None when `target` is not one."""
    bits = bnb_layer_bits(base_of(target))
    if bits is None:
        return None
    kwargs.pop("fan_in_fan_out", None)  # the packed weight is always (out, in)
    layer_cls = Linear4bit if bits == 4 else Linear8bitLt
    return layer_cls(target, adapter_name, **kwargs)
