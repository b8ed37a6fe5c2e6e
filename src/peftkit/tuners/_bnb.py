"""bitsandbytes' quantized linear layers for any method's layer: recognise them, read their weight as
numbers (dequantized) and write a new weight back (requantized), without importing bitsandbytes.

A model holding bitsandbytes layers has imported bitsandbytes already, so it is looked up in
`sys.modules`: `import peftkit` never loads it. A method adapting these layers lists a dispatcher in its
tuner's `layer_dispatchers` and gives its layer `_dense_base_weight` / `_write_base_weight` over these
functions (HiRA does; LoRA keeps its own copy in `lora/bnb.py`).
"""

from __future__ import annotations

import copy
import sys
from types import ModuleType

import torch
from torch import nn

__all__ = [
    "bnb_module",
    "dequantize_bnb_weight",
    "is_bnb_4bit_layer",
    "is_bnb_layer",
    "requantized_bnb_weight",
]


def bnb_module() -> ModuleType | None:
    """bitsandbytes, if something has imported it; else None."""
    return sys.modules.get("bitsandbytes")


def is_bnb_layer(module: nn.Module) -> bool:
    """Whether `module` is a bitsandbytes `Linear4bit` or `Linear8bitLt`."""
    bnb = bnb_module()
    return bnb is not None and isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))


def is_bnb_4bit_layer(module: nn.Module) -> bool:
    bnb = bnb_module()
    return bnb is not None and isinstance(module, bnb.nn.Linear4bit)


def dequantize_bnb_weight(layer: nn.Module) -> torch.Tensor:
    """The weight (out, in) of the bitsandbytes linear layer `layer`, dequantized (in the dtype it was
    quantized from for 4-bit, float32 for 8-bit)."""
    bnb = bnb_module()
    weight = layer.weight
    if isinstance(layer, bnb.nn.Linear4bit):
        data, state = weight.data, weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            # the first no-grad eval forward on some CPUs repacks the weight for bitsandbytes' CPU kernel;
            # read it through the inverse repacking, on copies (the layer keeps its format)
            data, state = bnb.functional._convert_weight_packed_for_cpu_inverse(
                data.clone(), copy.deepcopy(state)
            )
        return bnb.functional.dequantize_4bit(data, state)
    scales = getattr(weight, "SCB", None)
    if scales is None:  # after the first forward the row scales live in the layer's matmul state
        scales = layer.state.SCB
    return bnb.functional.int8_vectorwise_dequant(weight.data, scales)


def requantized_bnb_weight(layer: nn.Module, weight: torch.Tensor) -> nn.Parameter:
    """A new quantized weight parameter for the bitsandbytes layer `layer` holding `weight` (out, in),
    quantized as the layer's current weight is; the caller assigns it to `layer.weight`."""
    bnb = bnb_module()
    old = layer.weight
    if isinstance(layer, bnb.nn.Linear4bit):
        state = old.quant_state
        packed = getattr(state, "packing_format_for_cpu", False)
        dtype = getattr(state, "original_dtype", state.dtype) if packed else state.dtype
        new = bnb.nn.Params4bit(
            weight.to("cpu", dtype=dtype),
            requires_grad=False,
            blocksize=old.blocksize,
            compress_statistics=old.compress_statistics,
            quant_type=old.quant_type,
            quant_storage=old.quant_storage,
            module=getattr(old, "module", None),
        )
        return new.to(old.device)
    new = bnb.nn.Int8Params(weight.to("cpu"), requires_grad=False, has_fp16_weights=False)
    layer.state.reset_grads()  # drop the matmul state's copy of the old int8 weight and its scales
    return new.to(old.device)
