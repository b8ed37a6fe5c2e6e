"""torchao-quantized linear layers: a plain `nn.Linear` whose weight is one of torchao's tensor subclasses
(`Int8Tensor` for `Int8WeightOnlyConfig` / `Int8DynamicActivationInt8WeightConfig`, ...).

The weight dequantizes itself (`weight.dequantize()`). Requantizing needs the quantization settings:
they are read from the old weight itself (its block size and activation-quantization settings), which
torchao's `Int8Tensor` records; other torchao weight types are refused for merging, by name, rather than
requantized with guessed settings. torchao is never imported here unless such a weight is written back.
"""

from __future__ import annotations

import sys

import torch
from torch import nn


def _is_torchao_tensor(tensor: object) -> bool:
    module = type(tensor).__module__ or ""
    return module == "torchao" or module.startswith("torchao.")


def is_torchao_layer(layer: nn.Module) -> bool:
    """Whether `layer`'s weight is a torchao quantized tensor."""
    return "torchao" in sys.modules and _is_torchao_tensor(getattr(layer, "weight", None))


def dense_dtype(layer: nn.Module) -> torch.dtype:
    """The dtype the weight dequantizes to (torchao tensors report it as their dtype)."""
    return layer.weight.dtype


def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """The (out, in) weight as plain numbers."""
    weight = layer.weight
    try:
        return weight.dequantize()
    except NotImplementedError as error:
        raise ValueError(
            f"torchao's {type(weight).__name__} weights cannot be dequantized (torchao {_version()}), so peftkit "
            "cannot merge into them: keep the adapter unmerged, or quantize with Int8WeightOnlyConfig."
        ) from error


def _version() -> str:
    return getattr(sys.modules.get("torchao"), "__version__", "?")


def requantize(layer: nn.Module, weight: torch.Tensor) -> None:
    """Store `weight` (out, in) in `layer`, quantized as its current weight was."""
    old = layer.weight
    if type(old).__name__ != "Int8Tensor":
        raise ValueError(
            f"peftkit merges into torchao's Int8Tensor weights only; {type(old).__name__} would have to be "
            "requantized with settings it does not record. Keep the adapter unmerged, or quantize the base with "
            "Int8WeightOnlyConfig."
        )
    from torchao.quantization.granularity import PerBlock  # only here: merging into a torchao weight

    new = type(old).from_hp(
        weight.to(old.dtype),
        granularity=PerBlock(tuple(old.block_size)),  # the old weight's blocks (per row: (1, in))
        act_quant_kwargs=old.act_quant_kwargs,
        reduce_range=bool(getattr(old, "reduce_range", False)),
    )
    layer.weight = nn.Parameter(new.to(old.device), requires_grad=False)
