"""PVeRA over bitsandbytes' quantized linear layers: `Linear8bitLt` (LLM.int8()) and `Linear4bit` (nf4/fp4).

The base layer computes `base(x)` from its packed weight; the adapter's output (in the adapter's own
precision, fp32 by default) is cast to the base output's dtype and added, as peft does. Merging
dequantizes the weight, adds the mean's weight change and quantizes the result again (so it is rounded
to the 4- or 8-bit grid: a warning says so).

bitsandbytes is never imported here: a model holding bitsandbytes layers has imported it already.
"""

from __future__ import annotations

import copy
import sys
import warnings
from typing import Any

import torch
from torch import nn

from ...utils.warnings import PeftWarning
from .._linear_kind import align_fan_in_fan_out
from .layer import Linear


def _bnb() -> Any:
    return sys.modules.get("bitsandbytes")


def _is_bnb_layer(module: nn.Module) -> bool:
    bnb = _bnb()
    return bnb is not None and isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))


def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """The (out, in) weight of a bitsandbytes linear layer as plain numbers."""
    bnb = _bnb()
    weight = layer.weight
    if isinstance(layer, bnb.nn.Linear4bit):
        data, state = weight.data, weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            # repacked for bitsandbytes' CPU inference kernel (after an eval forward): read it back on copies
            data, state = bnb.functional._convert_weight_packed_for_cpu_inverse(
                data.clone(), copy.deepcopy(state)
            )
        return bnb.functional.dequantize_4bit(data, state)
    scales = weight.SCB if getattr(weight, "SCB", None) is not None else layer.state.SCB
    return bnb.functional.int8_vectorwise_dequant(weight.data, scales)


class _QuantizedLinear(Linear):
    """PVeRA on a quantized linear layer: merging goes through the dequantized weight."""

    bits = 0

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        return super()._adapter_output(adapter_name, x, base_result).to(base_result.dtype)

    def _dense_base_weight(self) -> torch.Tensor:
        base = self.get_base_layer()
        return dequantized_weight(base) if _is_bnb_layer(base) else super()._dense_base_weight()

    def _requantized(self, weight: torch.Tensor) -> nn.Parameter:
        raise NotImplementedError

    def _write_base_weight(self, weight: torch.Tensor) -> None:
        base = self.get_base_layer()
        if _is_bnb_layer(base):
            base.weight = self._requantized(weight)
        else:
            super()._write_base_weight(weight)

    def _check_mergeable(self) -> None:
        super()._check_mergeable()
        if _is_bnb_layer(self.get_base_layer()):
            warnings.warn(
                f"Merging PVeRA into a {self.bits}-bit quantized layer quantizes the merged weight again: it is "
                "rounded to the quantization grid, so outputs differ slightly from the unmerged model's.",
                PeftWarning,
                stacklevel=3,
            )


class Linear8bitLt(_QuantizedLinear):
    """PVeRA on `bitsandbytes.nn.Linear8bitLt` (int8 weights with per-row scales)."""

    bits = 8

    def _requantized(self, weight: torch.Tensor) -> nn.Parameter:
        base = self.get_base_layer()
        device = base.weight.device
        new = _bnb().nn.Int8Params(weight.to("cpu"), requires_grad=False, has_fp16_weights=False)
        base.state.reset_grads()  # the matmul state still holds the old int8 weight and scales
        return new.to(device)


class Linear4bit(_QuantizedLinear):
    """PVeRA on `bitsandbytes.nn.Linear4bit` (nf4 or fp4, with or without double quantization)."""

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


def dispatch_bnb(target: nn.Module, adapter_name: str, **kwargs: Any) -> nn.Module | None:
    """The PVeRA layer for a bitsandbytes layer `target`, or None when `target` is not one."""
    bnb = _bnb()
    if bnb is None:
        return None
    base = target.get_base_layer() if hasattr(target, "get_base_layer") else target
    if isinstance(base, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
        align_fan_in_fan_out(base, kwargs["config"])  # a linear layer: weights stored as (out, in)
    if isinstance(base, bnb.nn.Linear4bit):
        return Linear4bit(target, adapter_name=adapter_name, **kwargs)
    if isinstance(base, bnb.nn.Linear8bitLt):
        return Linear8bitLt(target, adapter_name=adapter_name, **kwargs)
    return None
