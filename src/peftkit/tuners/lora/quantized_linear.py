"""The LoRA layer over any quantized linear layer (bitsandbytes, torchao, HQQ): the base layer runs its own
quantized kernel; the adapter adds `s * B A x` in its own precision, cast to the base output's dtype as
peft does. Whatever needs the weight as numbers (DoRA's norm and base output, merging) goes through the
framework's quantized-weight functions (`tuners/_quantized.py`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layer import Linear


class QuantizedLinear(Linear):
    """LoRA on a quantized linear layer (the fused fast paths step aside: they need a plain weight)."""

    # as PEFT does over quantized layers: the adapter's output is cast to the base output's dtype, then added
    casts_adapter_output = True

    def _apply_base_weight(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._dense_base_weight().to(x.dtype))
