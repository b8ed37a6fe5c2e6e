"""bitsandbytes' quantized linear layers (`Linear4bit`: nf4/fp4, double quantization; `Linear8bitLt`:
LLM.int8()): which one a layer is, its weight as numbers, and a new quantized weight from numbers.

This is the one place peftkit reads or writes a bitsandbytes weight; every method reaches it through
`_quantized.py`, so merging, DoRA's weight norm or a method that needs the base weight work alike.
bitsandbytes is never imported here: a model holding bitsandbytes layers has imported it already.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import torch
from torch import nn

__all__ = [
    "bnb_layer_bits",
    "bnb_module",
    "dequantized_weight",
    "is_bnb_4bit_layer",
    "is_bnb_layer",
    "requantized_weight",
]


def bnb_module() -> Any:
    """The bitsandbytes module if it has been imported, else None."""
    return sys.modules.get("bitsandbytes")


def bnb_layer_bits(module: nn.Module) -> int | None:
    """4 for a bitsandbytes `Linear4bit`, 8 for a `Linear8bitLt`, None for any other module."""
    bnb = bnb_module()
    if bnb is None:
        return None
    if isinstance(module, bnb.nn.Linear4bit):
        return 4
    if isinstance(module, bnb.nn.Linear8bitLt):
        return 8
    return None


def is_bnb_layer(module: nn.Module) -> bool:
    """Whether `module` is a bitsandbytes `Linear4bit` or `Linear8bitLt`."""
    return bnb_layer_bits(module) is not None


def is_bnb_4bit_layer(module: nn.Module) -> bool:
    """Whether `module` is a bitsandbytes `Linear4bit`."""
    return bnb_layer_bits(module) == 4


def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """The (out, in) weight of a bitsandbytes linear layer, dequantized (the layer is left as it is)."""
    bnb = bnb_module()
    weight = layer.weight
    if bnb_layer_bits(layer) == 4:
        data, state = weight.data, weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            # repacked for bitsandbytes' CPU inference kernel (an eval forward without grad on a CPU with
            # AVX512-BF16): the plain 4-bit reader would misread it, so undo the repacking, on copies
            data, state = bnb.functional._convert_weight_packed_for_cpu_inverse(
                data.clone(), copy.deepcopy(state)
            )
        return bnb.functional.dequantize_4bit(data, state)
    scales = getattr(weight, "SCB", None)
    if scales is None:  # after the first forward the row scales live in the layer's matmul state
        scales = layer.state.SCB
    return bnb.functional.int8_vectorwise_dequant(weight.data, scales)


def requantized_weight(layer: nn.Module, weight: torch.Tensor) -> nn.Parameter:
    """A new quantized weight for the bitsandbytes layer `layer`, holding `weight` (out, in), with the
    layer's quantization settings (4-bit: block size, type, double quantization, storage), on its device."""
    bnb = bnb_module()
    old = layer.weight
    if bnb_layer_bits(layer) == 4:
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
