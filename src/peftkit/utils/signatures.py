"""Give a PeftModel's `forward`/`generate` the base model's signature, for tools that inspect it."""

from __future__ import annotations

import inspect
from functools import update_wrapper
from types import MethodType

from torch import nn

_METHODS = ("forward", "generate", "all")


def _has_only_varargs(method) -> bool:
    params = inspect.signature(method).parameters
    return len(params) == 2 and "args" in params and "kwargs" in params


def _copy_signature(model: nn.Module, name: str) -> None:
    """If `model.<name>` takes only (*args, **kwargs), wrap it with the base model's signature and docs."""
    method = getattr(model, name)
    base_method = getattr(type(model.get_base_model()), name, None)
    if base_method is None or not _has_only_varargs(method):
        return
    implementation = method.__func__

    def wrapper(self, *args, **kwargs):
        return implementation(self, *args, **kwargs)

    update_wrapper(wrapper, base_method, assigned=("__doc__", "__name__", "__annotations__"))
    wrapper.__signature__ = inspect.signature(base_method)
    setattr(model, name, MethodType(wrapper, model))


def update_forward_signature(model: nn.Module) -> None:
    """Show the base model's `forward` signature on `model.forward` (when it has only *args/**kwargs)."""
    _copy_signature(model, "forward")


def update_generate_signature(model: nn.Module) -> None:
    """Show the base model's `generate` signature on `model.generate` (when it has only *args/**kwargs)."""
    _copy_signature(model, "generate")


def update_signature(model: nn.Module, method: str = "all") -> None:
    """Update the signature of "forward", "generate" or "all" of them."""
    if method not in _METHODS:
        raise ValueError(f"method {method} is not supported please choose one of {list(_METHODS)}")
    if method in ("forward", "all"):
        update_forward_signature(model)
    if method in ("generate", "all"):
        update_generate_signature(model)
