"""HQQ-quantized linear layers (`hqq.core.quantize.HQQLinear`): the weight as numbers and back.

An `HQQLinear` keeps its packed weight (`W_q`) and its quantization settings (`quant_config`): it
dequantizes itself, and requantizing runs its own `quantize` on the new numbers with those settings, in
place. hqq is never imported here: a model holding HQQ layers has imported it already.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def is_hqq_layer(layer: nn.Module) -> bool:
    """Whether `layer` is an HQQ quantized linear layer."""
    module = type(layer).__module__ or ""
    return (module == "hqq" or module.startswith("hqq.")) and hasattr(layer, "dequantize")


def dense_dtype(layer: nn.Module) -> torch.dtype:
    """The dtype the layer computes (and dequantizes) in."""
    return layer.compute_dtype


def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """The (out, in) weight as plain numbers."""
    return layer.dequantize()


def requantize(layer: nn.Module, weight: torch.Tensor) -> None:
    """Quantize `weight` (out, in) into `layer` with its own settings (bits, group size, axis, ...)."""
    settings = copy.deepcopy(layer.quant_config)
    settings.pop("offload_meta", None)
    layer.quantize(weight.to(layer.compute_dtype), **settings)
