"""Merging adapters over a quantized base (bitsandbytes, torchao, HQQ) into a dequantized (plain
floating-point) copy of the base weights, instead of requantizing the merged weight."""

from __future__ import annotations

import torch
from torch import nn

from ..utils.other import get_submodules
from ._quantized import dense_linear, quantization_backend
from .tuners_utils import BaseTuner, BaseTunerLayer

__all__ = ["merge_and_unload_dequantized"]


def _float_dtype_of(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first unquantized floating-point parameter (fp32 if there is none)."""
    for param in model.parameters():
        if param.is_floating_point() and type(param).__module__.split(".")[0] not in (
            "bitsandbytes",
            "torchao",
        ):
            return param.dtype
    return torch.float32


def merge_and_unload_dequantized(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Merge the active adapters of a model over a quantized base (bitsandbytes, torchao, HQQ) into a
    dequantized copy of the base weights: returns the base model in plain floating point, every quantized
    linear layer (adapted or not) replaced by an `nn.Linear` of `dtype`.

    Unlike `merge_and_unload()` on a quantized base, nothing is requantized, so the merged model computes
    what the unmerged adapter model computed up to the base's dequantization (no 4-/8-bit rounding of the
    merged weight). `dtype` defaults to the dtype of the model's other floating-point parameters.

    Args:
        model: a `PeftModel` (or tuner) whose base holds quantized layers.
        dtype: the dtype of the dequantized linear layers.
    """
    tuner = model.base_model if hasattr(model, "get_base_model") else model
    if not isinstance(tuner, BaseTuner):
        raise TypeError(f"Expected a PeftModel or tuner, got {type(model).__name__}.")
    dtype = dtype or _float_dtype_of(tuner.model)
    for module in tuner.model.modules():
        if isinstance(module, BaseTunerLayer) and quantization_backend(module.base_layer) is not None:
            if module.merged:
                module.unmerge()
            module.base_layer = dense_linear(module.base_layer, dtype)
    base = tuner.merge_and_unload()
    for key, module in list(base.named_modules()):
        if quantization_backend(module) is not None:
            parent, _, name = get_submodules(base, key)
            setattr(parent, name, dense_linear(module, dtype))
    _drop_quantization_marks(base)
    return base


def _drop_quantization_marks(model: nn.Module) -> None:
    """A dequantized transformers model no longer claims to be quantized (saving, Trainer checks)."""
    for attr in ("is_loaded_in_4bit", "is_loaded_in_8bit", "quantization_method", "hf_quantizer"):
        if attr in model.__dict__:
            delattr(model, attr)
    if "is_quantized" in model.__dict__:
        model.is_quantized = False
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
