"""Which LoRA layer a quantized base layer gets: bitsandbytes (`bnb.py`), torchao (`torchao.py`) and HQQ
(`hqq.py`) layers have their own; the framework refuses the layers of other backends by name
(`LoraModel.quantization_backends`, `_dispatch.check_quantization_backend`) rather than adapting a packed
weight as if it were a plain one."""

from __future__ import annotations

from typing import Any

from torch import nn

from .bnb import dispatch_bnb
from .hqq import dispatch_hqq
from .torchao import dispatch_torchao

QUANTIZATION_BACKENDS = ("bitsandbytes", "torchao", "HQQ")


def dispatch_quantized(target: nn.Module, adapter_name: str, **kwargs: Any) -> nn.Module | None:
    """The LoRA layer for a quantized `target`; None when `target` is not quantized."""
    for dispatch in (dispatch_bnb, dispatch_torchao, dispatch_hqq):
        new_module = dispatch(target, adapter_name, **kwargs)
        if new_module is not None:
            return new_module
    return None
