"""Which adapter layer adapts a base layer: the one declarative dispatch every layer method uses.

A method's tuner declares, as the class attribute `layer_classes`, which base-layer types it adapts and
with which of its layer classes, in the order they are tried:

    layer_classes = {nn.Linear: Linear, CONV1D: Linear, nn.Embedding: Embedding, nn.Conv2d: Conv2d}

(`CONV1D` is the string "Conv1D", naming transformers' class without importing transformers.) The first
key the base layer is an instance of picks the class. A method that needs more (LoRA's bitsandbytes
layers, which subclass `nn.Linear`) lists functions in `layer_dispatchers`; each gets the target and the
layer arguments and returns a layer, or None to pass, and they run before `layer_classes`.

The framework then settles `fan_in_fan_out` for `nn.Linear`/`Conv1D` bases (see `align_fan_in_fan_out`),
drops it for every other base (it describes a linear weight only), and builds
`layer_cls(target, adapter_name=..., **kwargs)`. A base no key matches raises `UnsupportedLayerError`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ._linear_kind import (
    CONV1D,
    UnsupportedLayerError,
    align_fan_in_fan_out,
    base_layer_type,
    is_linear_kind,
    unknown_layer_name,
)
from ._quantized import quantization_backend

__all__ = ["CONV1D", "LayerClasses", "LayerDispatcher", "UnsupportedLayerError", "create_layer"]

LayerClasses = Mapping[type[nn.Module] | str, type[nn.Module]]
LayerDispatcher = Callable[..., nn.Module | None]


def base_of(target: nn.Module) -> nn.Module:
    """The module an adapter layer for `target` really adapts: below any adapter layers already there."""
    return target.get_base_layer() if hasattr(target, "get_base_layer") else target


def match_layer_class(
    layer_classes: LayerClasses, base: nn.Module
) -> tuple[type[nn.Module], type[nn.Module]] | None:
    """(base-layer type, layer class) of the first entry of `layer_classes` whose type `base` is an
    instance of; None when the method adapts no such layer."""
    for key, layer_cls in layer_classes.items():
        base_type = base_layer_type(key)
        if isinstance(base, base_type):
            return base_type, layer_cls
    return None


def _type_name(layer_type: type) -> str:
    """`torch.nn.Linear` for torch's layers (as users write them), else the full dotted name."""
    if getattr(nn, layer_type.__name__, None) is layer_type:
        return f"`torch.nn.{layer_type.__name__}`"
    return f"`{layer_type.__module__}.{layer_type.__qualname__}`"


def supported_types(layer_classes: LayerClasses) -> str:
    """The base-layer types of `layer_classes`, for messages: "`torch.nn.Linear`, ... and `...`"."""
    names = [
        "`transformers.pytorch_utils.Conv1D`" if key == CONV1D else _type_name(key) for key in layer_classes
    ]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def unsupported_layer_error(
    method: type, layer_classes: LayerClasses, base: nn.Module
) -> UnsupportedLayerError:
    """The error for a target `method` cannot adapt: names the method, the layer and the supported types."""
    return UnsupportedLayerError(
        f"Target module {base} (type {type(base).__name__}) is not supported by {method.__name__}. Currently, "
        f"only adapters for {supported_types(layer_classes)} are supported; remove it from target_modules."
    )


def create_layer(
    method: type, config: Any, adapter_name: str, target: nn.Module, kwargs: dict[str, Any]
) -> nn.Module:
    """The new adapter layer of `method` (a tuner class) around `target`, built with `kwargs`.

    A target quantized by a backend the method does not list in `method.quantization_backends` is
    refused by name. `method.layer_dispatchers` are tried first, then `method.layer_classes`; for an
    `nn.Linear`/`Conv1D` base `config.fan_in_fan_out` is aligned to the layer (when the config has one; on
    a copy when `method.keeps_config_fan_in_fan_out`) and passed on if `kwargs` carries it, and a `Conv1D`
    base adds `is_target_conv_1d_layer=True`.
    """
    check_quantization_backend(method, base_of(target), config)
    for dispatch in method.layer_dispatchers:
        layer = dispatch(target, adapter_name, **kwargs)
        if layer is not None:
            return layer
    base = base_of(target)
    match = match_layer_class(method.layer_classes, base)
    if match is None:
        raise unsupported_layer_error(method, method.layer_classes, base)
    base_type, layer_cls = match
    kwargs = dict(kwargs)
    if is_linear_kind(base_type):
        if hasattr(config, "fan_in_fan_out"):
            # a method that keeps the user's value in its config corrects a copy (the layer gets the fix)
            aligned = copy.copy(config) if getattr(method, "keeps_config_fan_in_fan_out", False) else config
            align_fan_in_fan_out(base, aligned)
            if "fan_in_fan_out" in kwargs:
                kwargs["fan_in_fan_out"] = aligned.fan_in_fan_out
        if base_type is base_layer_type(CONV1D):
            kwargs["is_target_conv_1d_layer"] = True
    else:
        kwargs.pop("fan_in_fan_out", None)
    return layer_cls(target, adapter_name=adapter_name, **kwargs)


def check_quantization_backend(method: type, base: nn.Module, config: Any = None) -> None:
    """Raise `UnsupportedLayerError` when `base` is quantized by a backend `method` does not adapt."""
    backend = quantization_backend(base)
    supported = getattr(method, "quantization_backends", ())
    if backend is None or backend.family in supported:
        return
    peft_type = getattr(config, "peft_type", None)
    name = getattr(peft_type, "value", None) or method.__name__.removesuffix("Model")
    raise UnsupportedLayerError(
        f"{name} on {backend}-quantized layers ({type(base).__module__}.{type(base).__name__}) is not supported "
        f"by peftkit: {name} adapts layers quantized by {', '.join(supported) or 'no backend'}. Quantize the base "
        "model with one of those (bitsandbytes: transformers' BitsAndBytesConfig) or load it unquantized (LoRA "
        "adapts bitsandbytes, torchao and HQQ layers)."
    )


def check_layer_classes(method: type) -> None:
    """Raise a ValueError when `method.layer_classes` is not a valid declaration (checked at registration,
    so that a mistyped entry fails on import rather than on the first model)."""
    layer_classes = getattr(method, "layer_classes", None)
    if not isinstance(layer_classes, Mapping) or not layer_classes:
        raise ValueError(
            f"{method.__name__}.layer_classes must map each base-layer type the method adapts to its layer class, "
            "e.g. {nn.Linear: Linear, CONV1D: Linear}; it is empty or not a mapping."
        )
    for key, layer_cls in layer_classes.items():
        if isinstance(key, str):
            if key != CONV1D:  # not resolved here: that would import transformers on `import peftkit`
                raise unknown_layer_name(key)
        elif not (isinstance(key, type) and issubclass(key, nn.Module)):
            raise ValueError(
                f"{method.__name__}.layer_classes key {key!r} is not a module class or {CONV1D!r}; "
                "give each base layer as its class (e.g. nn.Linear)."
            )
        if not (isinstance(layer_cls, type) and issubclass(layer_cls, nn.Module)):
            raise ValueError(
                f"{method.__name__}.layer_classes maps {key!r} to {layer_cls!r}, which is not a module class; "
                "map it to the method's layer class."
            )
