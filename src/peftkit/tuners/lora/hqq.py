"""LoRA over HQQ-quantized linear layers (`hqq.core.quantize.HQQLinear`), under peft's class name. Merging
dequantizes, merges and requantizes the layer in place with its own settings (`tuners/_hqq.py`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .._dispatch import base_of
from .._hqq import is_hqq_layer
from .quantized_linear import QuantizedLinear


class HqqLoraLinear(QuantizedLinear):
    """LoRA on `hqq.core.quantize.HQQLinear`."""

    def __repr__(self) -> str:
        return super().__repr__().replace("lora.Linear", "lora.HqqLoraLinear", 1)


def dispatch_hqq(target: nn.Module, adapter_name: str, **kwargs: Any) -> nn.Module | None:
    """The LoRA layer for an HQQ layer `target`, or None when `target` is not one."""
    if not is_hqq_layer(base_of(target)):
        return None
    kwargs.pop("fan_in_fan_out", None)
    return HqqLoraLinear(target, adapter_name, **kwargs)
