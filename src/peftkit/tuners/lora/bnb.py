"""LoRA (and DoRA) over bitsandbytes' quantized linear layers: `Linear4bit` (nf4/fp4, double quant) and
`Linear8bitLt` (QLoRA, LLM.int8()).

The base layer computes `base(x)` from its packed weight; the adapter adds `s * B A x` in the adapter's
own precision (fp32 by default). Whatever needs the weight as numbers (DoRA's norm, merging) works on a
dequantized copy. Merging writes the merged weight back *requantized*, so it is rounded to the 4- or
8-bit grid (a warning says so); `peftkit.utils.quantization.merge_and_unload_dequantized` merges into a
dequantized, plain floating-point model instead (no rounding).

bitsandbytes is never imported here: a model holding bitsandbytes layers has imported it already.
"""

from __future__ import annotations

import copy
import sys
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...utils.warnings import PeftWarning
from ..tuners_utils import _as_list
from .layer import Linear

_ROUNDING_WARNING = (
    "Merging LoRA into a {bits}-bit quantized layer dequantizes the weight, adds the adapter and quantizes "
    "the result again: the merged weight is rounded to the {bits}-bit grid, so the outputs differ slightly from "
    "the unmerged model's (and unmerging does not restore the original weight exactly). For an exact merge use "
    "peftkit.utils.quantization.merge_and_unload_dequantized(model), which returns a floating-point model."
)


def _bnb():
    return sys.modules.get("bitsandbytes")


def is_bnb_layer(module: nn.Module) -> bool:
    """Whether `module` is a bitsandbytes `Linear4bit` or `Linear8bitLt`."""
    bnb = _bnb()
    return bnb is not None and isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))


def dequantize_bnb_weight(layer: nn.Module) -> torch.Tensor:
    """The weight (out, in) of a bitsandbytes linear layer, dequantized."""
    bnb = _bnb()
    weight = layer.weight
    if isinstance(layer, bnb.nn.Linear4bit):
        data, state = weight.data, weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            # bitsandbytes repacked the weight for its CPU inference kernel (first eval forward without
            # grad); read it through the inverse repacking, on copies (the layer keeps its format)
            data, state = bnb.functional._convert_weight_packed_for_cpu_inverse(
                data.clone(), copy.deepcopy(state)
            )
        return bnb.functional.dequantize_4bit(data, state)
    scales = getattr(weight, "SCB", None)
    if scales is None:  # after the first forward the scales live in the layer's matmul state
        scales = layer.state.SCB
    return bnb.functional.int8_vectorwise_dequant(weight.data, scales)


def dense_linear(layer: nn.Module, dtype: torch.dtype | None = None) -> nn.Linear:
    """A plain, frozen `nn.Linear` computing what the bitsandbytes layer `layer` computes (dequantized)."""
    weight = dequantize_bnb_weight(layer)
    dtype = dtype or weight.dtype
    linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    if layer.bias is not None:
        linear.bias = nn.Parameter(layer.bias.data.to(dtype), requires_grad=False)
    return linear


class _QuantizedLinear(Linear):
    """LoRA on a quantized linear layer: dense work goes through `_dense_base_weight` (dequantized)."""

    bits: int = 0
    # as PEFT does over bitsandbytes: the adapter's output is cast to the base output's dtype, then added
    casts_adapter_output = True

    def _dense_base_weight(self) -> torch.Tensor:
        base = self.get_base_layer()
        return dequantize_bnb_weight(base) if is_bnb_layer(base) else super()._dense_base_weight()

    def _requantized(self, weight: torch.Tensor) -> nn.Parameter:
        """A new quantized weight parameter holding `weight` (out, in)."""
        raise NotImplementedError

    def _write_base_weight(self, weight: torch.Tensor) -> None:
        base = self.get_base_layer()
        if is_bnb_layer(base):
            base.weight = self._requantized(weight)
        else:  # dequantized in place (merge_and_unload_dequantized)
            super()._write_base_weight(weight)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        names = self.active_adapters if adapter_names is None else _as_list(adapter_names)
        pending = any(self.has_adapter(n) and n not in self.merged_adapters for n in names)
        if pending and is_bnb_layer(self.get_base_layer()):
            warnings.warn(_ROUNDING_WARNING.format(bits=self.bits), PeftWarning, stacklevel=2)
        super().merge(safe_merge=safe_merge, adapter_names=adapter_names)

    def unmerge(self) -> None:
        if self.merged_adapters and is_bnb_layer(self.get_base_layer()):
            warnings.warn(
                f"Unmerging LoRA from a {self.bits}-bit quantized layer requantizes the weight: it is not exactly "
                "the weight before the merge.",
                PeftWarning,
                stacklevel=2,
            )
        super().unmerge()

    def _apply_base_weight(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._dense_base_weight().to(x.dtype))


class Linear4bit(_QuantizedLinear):
    """LoRA on `bitsandbytes.nn.Linear4bit` (nf4 or fp4, with or without double quantization)."""

    bits = 4

    def _requantized(self, weight: torch.Tensor) -> nn.Parameter:
        old = self.get_base_layer().weight
        state = old.quant_state
        packed = getattr(state, "packing_format_for_cpu", False)
        dtype = getattr(state, "original_dtype", state.dtype) if packed else state.dtype
        new = _bnb().nn.Params4bit(
            weight.to("cpu", dtype=dtype),
            requires_grad=False,
            blocksize=old.blocksize,
            compress_statistics=old.compress_statistics,
            quant_type=old.quant_type,
            quant_storage=old.quant_storage,
            module=getattr(old, "module", None),
        )
        return new.to(old.device)


class Linear8bitLt(_QuantizedLinear):
    """LoRA on `bitsandbytes.nn.Linear8bitLt` (int8 weights with per-row scales)."""

    bits = 8

    def _requantized(self, weight: torch.Tensor) -> nn.Parameter:
        base = self.get_base_layer()
        device = base.weight.device
        new = _bnb().nn.Int8Params(weight.to("cpu"), requires_grad=False, has_fp16_weights=False)
        base.state.reset_grads()  # drop the matmul state's copy of the old int8 weight and its scales
        return new.to(device)


def dispatch_bnb(target: nn.Module, adapter_name: str, **kwargs: Any) -> nn.Module | None:
    """The LoRA layer for a bitsandbytes layer `target`, or None when `target` is not one."""
    bnb = _bnb()
    if bnb is None:
        return None
    base = target.get_base_layer() if hasattr(target, "get_base_layer") else target
    kwargs.pop("fan_in_fan_out", None)
    if isinstance(base, bnb.nn.Linear4bit):
        return Linear4bit(target, adapter_name, **kwargs)
    if isinstance(base, bnb.nn.Linear8bitLt):
        return Linear8bitLt(target, adapter_name, **kwargs)
    return None
