"""Adapting `nn.Linear` and transformers' `Conv1D` (GPT-2 style, weight stored as (in, out)) alike.

The two differ only in the weight's orientation, which a config records as `fan_in_fan_out`. Users often
leave it at its default; as peft does, the layer decides and the config is corrected with a warning.

`Conv1D` is named by the string `CONV1D` wherever a type must be stated before it is needed (a method's
`layer_classes`): importing peftkit must not import transformers, so the class is looked up on first use.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from ..utils.warnings import PeftWarning
from ._quantized import weight_shape

CONV1D = "Conv1D"  # transformers.pytorch_utils.Conv1D, resolved by `base_layer_type`


class UnsupportedLayerError(TypeError, ValueError):
    """A target module of a type the method cannot adapt (a TypeError and a ValueError, so code written
    against either of peft's errors for this case catches it)."""


def conv1d_type() -> type[nn.Module]:
    """transformers' `Conv1D` class (imports transformers on the first call)."""
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def unknown_layer_name(key: str) -> ValueError:
    """The error for a base-layer name other than `CONV1D` in a method's `layer_classes`."""
    return ValueError(
        f"Unknown base-layer name {key!r} in layer_classes: the only name accepted is {CONV1D!r} "
        "(transformers' Conv1D); give any other base layer as its class."
    )


def base_layer_type(key: type[nn.Module] | str) -> type[nn.Module]:
    """The class a `layer_classes` key stands for: the key itself, or `Conv1D` for the string `CONV1D`."""
    if isinstance(key, str):
        if key != CONV1D:
            raise unknown_layer_name(key)
        return conv1d_type()
    return key


def is_linear_kind(layer_type: type[nn.Module]) -> bool:
    """Whether `layer_type` is `nn.Linear` or `Conv1D`, the types whose weight orientation
    `fan_in_fan_out` describes."""
    return layer_type is nn.Linear or layer_type is conv1d_type()


def align_fan_in_fan_out(base: nn.Module, config: Any) -> bool:
    """Whether `base` is a `Conv1D`; `config.fan_in_fan_out` is set to match it (with a warning if it did not)."""
    is_conv1d = isinstance(base, conv1d_type())
    if is_conv1d != config.fan_in_fan_out:
        layer_kind = "`Conv1D`" if is_conv1d else "`torch.nn.Linear`"
        warnings.warn(
            f"fan_in_fan_out is set to {config.fan_in_fan_out} but the target module is {layer_kind}. "
            f"Setting fan_in_fan_out to {is_conv1d}.",
            PeftWarning,
        )
        config.fan_in_fan_out = is_conv1d
    return is_conv1d


def set_linear_sizes(layer: nn.Module, fan_in_fan_out: bool, is_target_conv_1d_layer: bool = False) -> None:
    """Record on an adapter `layer` over a Linear or Conv1D base its weight's orientation and its
    `out_features`/`in_features`, read as numbers (a 4-bit weight is stored packed)."""
    layer.fan_in_fan_out = fan_in_fan_out
    layer.is_target_conv_1d_layer = is_target_conv_1d_layer
    shape = weight_shape(layer.get_base_layer())
    layer.out_features, layer.in_features = shape[::-1] if fan_in_fan_out else shape
