"""Which LoRA layer a quantized base layer gets: bitsandbytes layers are supported (see `bnb.py`); the
layers of other quantization backends are named in a clear error rather than adapted wrongly (a LoRA
layer that merges into, or reads, a packed weight as if it were a plain one)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .bnb import dispatch_bnb

# module prefix of a backend's layer (or weight tensor) classes -> the backend's name
_UNSUPPORTED_BACKENDS = {
    "torchao": "torchao",
    "hqq": "HQQ",
    "auto_gptq": "GPTQ (auto-gptq)",
    "gptqmodel": "GPTQ (gptqmodel)",
    "optimum.gptq": "GPTQ (optimum)",
    "awq": "AWQ (autoawq)",
    "eetq": "EETQ",
    "aqlm": "AQLM",
}


def _backend_of(obj: Any) -> str | None:
    module = type(obj).__module__ or ""
    for prefix, name in _UNSUPPORTED_BACKENDS.items():
        if module == prefix or module.startswith(prefix + "."):
            return name
    return None


def dispatch_quantized(target: nn.Module, adapter_name: str, **kwargs: Any) -> nn.Module | None:
    """The LoRA layer for a quantized `target`; None when `target` is not quantized.

    Raises a `ValueError` naming the backend when `target` belongs to one peftkit does not support.
    """
    new_module = dispatch_bnb(target, adapter_name, **kwargs)
    if new_module is not None:
        return new_module
    base = target.get_base_layer() if hasattr(target, "get_base_layer") else target
    backend = _backend_of(base) or _backend_of(getattr(base, "weight", None))
    if backend is None:
        return None
    raise ValueError(
        f"LoRA on {backend}-quantized layers ({type(base).__module__}.{type(base).__name__}) is not supported by "
        "peftkit yet; only bitsandbytes layers (Linear4bit, Linear8bitLt) are. Quantize the base model with "
        "bitsandbytes (transformers' BitsAndBytesConfig) instead, or load it unquantized."
    )
