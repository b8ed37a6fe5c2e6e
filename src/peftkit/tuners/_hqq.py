"""HQQ-quantized linear layers (`hqq.core.quantize.HQQLinear`): the weight as numbers and back.

An `HQQLinear` keeps its packed weight (`W_q`) and its quantization settings (`quant_config`): it
dequantizes itself; requantizing builds a new layer of the same class with those settings (an
`HQQLinear` cannot take a new packed weight in place) and quantizes the new numbers into it. hqq is never
imported here: a model holding HQQ layers has imported it already.
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


def requantized_layer(layer: nn.Module, weight: torch.Tensor) -> nn.Module:
    """A new HQQ layer like `layer` (settings, dtype, device, bias) holding `weight` (out, in), quantized."""
    settings = copy.deepcopy(layer.quant_config)
    new = type(layer)(
        None,
        {**settings, "offload_meta": layer.offload_meta},
        compute_dtype=layer.compute_dtype,
        device=layer.device,
        initialize=False,
    )
    settings.pop("offload_meta", None)
    new.quantize(weight.to(layer.compute_dtype), **settings)
    new.bias = layer.bias
    return new
