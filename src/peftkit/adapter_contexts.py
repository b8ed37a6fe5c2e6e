"""Context managers that change how adapter layers compute, and undo it exactly on exit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from .tuners.lora.layer import LoraLayer
from .tuners.tuners_utils import BaseTunerLayer


@contextmanager
def rescale_adapter_scale(model: nn.Module, multiplier: float | int) -> Iterator[None]:
    """Multiply every LoRA scaling by `multiplier` inside the block (e.g. 0.5 for half strength).

    The scalings are restored to their exact previous values afterwards (not divided back, which could
    leave rounding errors).
    """
    if isinstance(multiplier, bool) or not isinstance(multiplier, (float, int)):
        raise TypeError(f"Argument multiplier should be of type float, got {type(multiplier)}")
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if not layers:
        raise ValueError("scaling is only supported for models with `LoraLayer`s")
    saved = [(layer, dict(layer.scaling)) for layer in layers]
    try:
        for layer, scaling in saved:
            layer.scaling = {name: value * multiplier for name, value in scaling.items()}
        yield
    finally:
        for layer, scaling in saved:
            layer.scaling = scaling


@contextmanager
def disable_input_dtype_casting(model: nn.Module, active: bool = True) -> Iterator[None]:
    """Inside the block, adapter layers do not cast their input to the adapter weights' dtype.

    Useful when another mechanism (e.g. layerwise upcasting) manages dtypes. With `active=False`
    nothing changes.
    """
    if not active:
        yield
        return
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    saved = [(layer, layer.cast_input_dtype_enabled) for layer in layers]
    try:
        for layer in layers:
            layer.cast_input_dtype_enabled = False
        yield
    finally:
        for layer, enabled in saved:
            layer.cast_input_dtype_enabled = enabled
