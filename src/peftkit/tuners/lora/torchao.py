"""LoRA over torchao-quantized linear layers (an `nn.Linear` whose weight is a torchao tensor, e.g.
`Int8WeightOnlyConfig`), under peft's class name. Merging dequantizes, merges and requantizes with the
weight's own settings (int8 weights; `tuners/_torchao.py`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .._dispatch import base_of
from .._torchao import is_torchao_layer
from .quantized_linear import QuantizedLinear


class TorchaoLoraLinear(QuantizedLinear):
    """LoRA on an `nn.Linear` holding a torchao quantized weight."""

    def __repr__(self) -> str:
        return super().__repr__().replace("lora.Linear", "lora.TorchaoLoraLinear", 1)


def dispatch_torchao(target: nn.Module, adapter_name: str, **kwargs: Any) -> nn.Module | None:
    """The LoRA layer for a torchao-quantized `target`, or None when `target` is not one."""
    if not is_torchao_layer(base_of(target)):
        return None
    kwargs.pop("fan_in_fan_out", None)
    return TorchaoLoraLinear(target, adapter_name, **kwargs)
