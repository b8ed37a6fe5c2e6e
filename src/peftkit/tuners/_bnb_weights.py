"""The weight of a bitsandbytes linear layer as plain numbers, and back: what any method needs to merge
into a quantized base (`_dense_base_weight` / `_write_base_weight`).

bitsandbytes is never imported here: a model holding its layers has imported it already.
"""

from __future__ import annotations

import copy
import sys

import torch
from torch import nn


def bnb_module():
    """The bitsandbytes module if it has been imported, else None."""
    return sys.modules.get("bitsandbytes")


def is_bnb_linear(module: nn.Module) -> bool:
    """Whether `module` is a bitsandbytes `Linear4bit` or `Linear8bitLt`."""
    bnb = bnb_module()
    return bnb is not None and isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))


def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """The weight (out, in) of a bitsandbytes linear layer, dequantized (the layer is left as it is)."""
    bnb = bnb_module()
    weight = layer.weight
    if isinstance(layer, bnb.nn.Linear4bit):
        data, state = weight.data, weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            # repacked for bitsandbytes' CPU inference kernel (first eval forward): undo it on copies
            data, state = bnb.functional._convert_weight_packed_for_cpu_inverse(
                data.clone(), copy.deepcopy(state)
            )
        return bnb.functional.dequantize_4bit(data, state)
    scales = getattr(weight, "SCB", None)
    if scales is None:  # after the first forward the scales live in the layer's matmul state
        scales = layer.state.SCB
    return bnb.functional.int8_vectorwise_dequant(weight.data, scales)


def requantized_weight(layer: nn.Module, weight: torch.Tensor) -> nn.Parameter:
    """A new quantized weight parameter for `layer` holding `weight` (out, in), on the layer's device."""
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
