"""Quantized base layers, whatever the backend: which backend packed a layer, the layer's weight as plain
numbers (its logical shape and a dequantized copy), and writing merged numbers back (requantized).

The tuner framework goes through these functions wherever it touches a base weight
(`BaseTunerLayer._dense_base_weight` / `_write_base_weight`, the adapted-weight forward), so every method
merges into a quantized base by dequantizing, merging and requantizing, and a method that sizes its
tensors from the base weight reads `weight_shape` instead of the packed tensor's shape.

Backends:
- bitsandbytes `Linear4bit` / `Linear8bitLt` (`_bnb.py`): dequantize and requantize;
- torchao tensor-subclass weights (`_torchao.py`) and HQQ's `HQQLinear` (`_hqq.py`): dequantize and
  requantize with the layer's own settings;
- GPTQ, AWQ, EETQ, AQLM, optimum-quanto layers: recognised by name, never adapted as plain layers (the
  methods that support them say so; merging into them is refused with the backend's name).
No backend is imported here: a model holding such layers has imported its backend already.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import _bnb, _hqq, _torchao

__all__ = [
    "QuantizationBackend",
    "get_quantization_kwargs",
    "quantization_extra_repr",
    "resolve_quantization_backend",
    "dense_linear",
    "dense_weight",
    "quantization_backend",
    "requantizing_message",
    "store_weight",
    "weight_dtype",
    "weight_shape",
]

# module prefix of a backend's layer (or weight tensor) classes -> the backend's name, for the backends
# whose packed weights peftkit cannot turn into numbers
_OPAQUE_BACKENDS = {
    "auto_gptq": "GPTQ (auto-gptq)",
    "gptqmodel": "GPTQ (gptqmodel)",
    "optimum.gptq": "GPTQ (optimum)",
    "awq": "AWQ (autoawq)",
    "eetq": "EETQ",
    "aqlm": "AQLM",
    "optimum.quanto": "optimum-quanto",
}


@dataclass(frozen=True)
class QuantizationBackend:
    """The quantization backend of one base layer: its name, its family (the package: "bitsandbytes",
    "torchao", "HQQ", ...) and whether its weight can be read as numbers (`dequantizes`) and written back
    (merging needs both)."""

    name: str
    dequantizes: bool
    family: str = ""

    def __str__(self) -> str:
        return self.name


def _module_prefix_match(obj: object, prefixes: dict[str, str]) -> str | None:
    module = type(obj).__module__ or ""
    for prefix, name in prefixes.items():
        if module == prefix or module.startswith(prefix + "."):
            return name
    return None


def quantization_backend(layer: nn.Module) -> QuantizationBackend | None:
    """The backend that quantized `layer`, or None for a plain layer."""
    bits = _bnb.bnb_layer_bits(layer)
    if bits is not None:
        return QuantizationBackend(f"bitsandbytes {bits}-bit", dequantizes=True, family="bitsandbytes")
    if _torchao.is_torchao_layer(layer):
        return QuantizationBackend("torchao", dequantizes=True, family="torchao")
    if _hqq.is_hqq_layer(layer):
        return QuantizationBackend("HQQ", dequantizes=True, family="HQQ")
    name = _module_prefix_match(layer, _OPAQUE_BACKENDS) or _module_prefix_match(
        getattr(layer, "weight", None), _OPAQUE_BACKENDS
    )
    return None if name is None else QuantizationBackend(name, dequantizes=False, family=name)


def weight_shape(layer: nn.Module) -> torch.Size:
    """The shape of `layer`'s weight as numbers: (out, in) for a quantized linear layer, whose stored
    tensor is packed (bitsandbytes 4-bit stores (out * in / 2, 1) bytes), else the weight's own shape."""
    if quantization_backend(layer) is None:
        return layer.weight.shape
    return torch.Size((layer.out_features, layer.in_features))


def weight_dtype(layer: nn.Module) -> torch.dtype:
    """The floating-point dtype `layer`'s weight stands for: its own for a plain layer, the dtype it
    dequantizes to for a quantized one."""
    weight = getattr(layer, "weight", None)
    if weight is not None and weight.is_floating_point() and quantization_backend(layer) is None:
        return weight.dtype
    if _bnb.bnb_layer_bits(layer) == 4:
        state = weight.quant_state
        return getattr(state, "original_dtype", None) or state.dtype
    if _hqq.is_hqq_layer(layer):
        return _hqq.dense_dtype(layer)
    if _torchao.is_torchao_layer(layer):
        return _torchao.dense_dtype(layer)
    return torch.float32  # bitsandbytes int8 dequantizes to fp32


def requantizing_message(backend: QuantizationBackend, merging: bool) -> str:
    """The warning that merging into (or unmerging from) a layer of `backend` rounds its weight."""
    if not merging:
        return (
            f"Unmerging an adapter from a {backend} quantized layer requantizes the weight: it is not exactly the "
            "weight before the merge."
        )
    return (
        f"Merging an adapter into a {backend} quantized layer requantizes the merged weight: it is rounded to the "
        "quantization grid, so the outputs differ slightly from the unmerged model's (and unmerging does not "
        "restore the original weight exactly). For an exact merge use "
        "peftkit.utils.quantization.merge_and_unload_dequantized(model), which returns a floating-point model."
    )


def _refuse(layer: nn.Module, backend: QuantizationBackend, what: str) -> ValueError:
    return ValueError(
        f"Cannot {what} {type(layer).__name__}: its weight is packed by {backend.name}, which peftkit cannot turn "
        "back into numbers. Keep the adapter unmerged (it works in the forward pass), or load the base model "
        "unquantized to merge."
    )


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """`layer`'s weight as plain numbers (dequantized for a quantized layer; the layer is left as it is)."""
    backend = quantization_backend(layer)
    if backend is None:
        return layer.weight.data
    if not backend.dequantizes:
        raise _refuse(layer, backend, "read the weight of")
    if _bnb.is_bnb_layer(layer):
        return _bnb.dequantized_weight(layer)
    if _torchao.is_torchao_layer(layer):
        return _torchao.dequantized_weight(layer)
    return _hqq.dequantized_weight(layer)


def check_writable(layer: nn.Module) -> None:
    """Raise before a merge starts when `layer`'s weight cannot be written back."""
    backend = quantization_backend(layer)
    if backend is not None and not backend.dequantizes:
        raise _refuse(layer, backend, "merge into")


def store_weight(layer: nn.Module, weight: torch.Tensor) -> nn.Module:
    """Store `weight` (numbers, (out, in) for a quantized layer) in `layer`; a quantized layer requantizes
    it with its own settings, so it is rounded to the layer's grid. Returns the layer that holds it now:
    `layer`, or a new layer that replaces it (HQQ layers cannot take a new packed weight in place)."""
    backend = quantization_backend(layer)
    if backend is None:
        layer.weight.data = weight.to(layer.weight.dtype)
    elif not backend.dequantizes:
        raise _refuse(layer, backend, "merge into")
    elif _bnb.is_bnb_layer(layer):
        layer.weight = _bnb.requantized_weight(layer, weight)
    elif _torchao.is_torchao_layer(layer):
        _torchao.requantize(layer, weight)
    else:
        return _hqq.requantized_layer(layer, weight)
    return layer


def dense_linear(layer: nn.Module, dtype: torch.dtype | None = None) -> nn.Linear:
    """A plain, frozen `nn.Linear` computing what the quantized linear layer `layer` computes (dequantized)."""
    weight = dense_weight(layer)
    dtype = dtype or weight.dtype
    linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    if layer.bias is not None:
        linear.bias = nn.Parameter(layer.bias.data.to(dtype), requires_grad=False)
    return linear


# ----- peft's names (`peft.utils`) -----
def resolve_quantization_backend(base_layer: nn.Module, **kwargs: object) -> QuantizationBackend | None:
    """The quantization backend of `base_layer`, or None when it is not quantized (PEFT's name).

    PEFT needs `get_apply_tensor_subclass=` for torchao layers to requantize them; peftkit requantizes with
    the layer's own settings, so keyword arguments are accepted and not needed."""
    return quantization_backend(base_layer)


def quantization_extra_repr(module: nn.Module) -> str:
    """`module`'s own `extra_repr`, plus its base layer's quantization backend when it has one."""
    parts = [part for part in [nn.Module.extra_repr(module)] if part]
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    backend = quantization_backend(base)
    if backend is not None:
        parts.append(f"quantization_backend='{backend}'")
    return ", ".join(parts)


def get_quantization_kwargs(model: nn.Module) -> dict[str, object]:
    """The quantization settings of a transformers `model` that adapter layers on it may need (PEFT reads
    torchao's `get_apply_tensor_subclass` from the model's quantizer; empty when there is none)."""
    quantizer = getattr(model, "hf_quantizer", None)
    config = getattr(quantizer, "quantization_config", None)
    getter = getattr(config, "get_apply_tensor_subclass", None)
    return {} if getter is None else {"get_apply_tensor_subclass": getter}
