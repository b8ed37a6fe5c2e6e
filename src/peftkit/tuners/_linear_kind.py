"""Adapting `nn.Linear` and transformers' `Conv1D` (GPT-2 style, weight stored as (in, out)) alike.

The two differ only in the weight's orientation, which a config records as `fan_in_fan_out`. Users often
leave it at its default; as peft does, the layer decides and the config is corrected with a warning.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from ..utils.warnings import PeftWarning


class UnsupportedLayerError(TypeError, ValueError):
    """A target module of a type the method cannot adapt (a TypeError and a ValueError, so code written
    against either of peft's errors for this case catches it)."""


def align_fan_in_fan_out(base: nn.Module, config: Any) -> bool:
    """Whether `base` is a `Conv1D`; `config.fan_in_fan_out` is set to match it (with a warning if it did not)."""
    from transformers.pytorch_utils import Conv1D

    is_conv1d = isinstance(base, Conv1D)
    if is_conv1d != config.fan_in_fan_out:
        layer_kind = "`Conv1D`" if is_conv1d else "`torch.nn.Linear`"
        warnings.warn(
            f"fan_in_fan_out is set to {config.fan_in_fan_out} but the target module is {layer_kind}. "
            f"Setting fan_in_fan_out to {is_conv1d}.",
            PeftWarning,
        )
        config.fan_in_fan_out = is_conv1d
    return is_conv1d


def linear_or_conv1d(target: nn.Module, config: Any, method: str) -> bool:
    """For methods that adapt only linear layers: `align_fan_in_fan_out` for the layer under `target`,
    after checking it is an `nn.Linear` or a `Conv1D` (anything else raises `UnsupportedLayerError`)."""
    from transformers.pytorch_utils import Conv1D

    base = target.get_base_layer() if hasattr(target, "get_base_layer") else target
    if not isinstance(base, (nn.Linear, Conv1D)):
        raise UnsupportedLayerError(
            f"Target module {base} (type {type(base).__name__}) is not supported by {method}. Currently, only "
            "`torch.nn.Linear` and `transformers.pytorch_utils.Conv1D` are supported; remove it from "
            "target_modules."
        )
    return align_fan_in_fan_out(base, config)


def layer_for_base(
    target: nn.Module,
    layer_classes: dict[type, type],
    method: str,
    config: Any,
    adapter_name: str,
    **kwargs: Any,
) -> nn.Module:
    """The adapter layer for `target`: the class of the first entry of `layer_classes` whose base-layer type
    `target`'s base layer is, built with `kwargs`. For `nn.Linear` the `fan_in_fan_out` setting is aligned
    first (see `align_fan_in_fan_out`); any other type raises `UnsupportedLayerError` naming the supported ones."""
    base = target.get_base_layer() if hasattr(target, "get_base_layer") else target
    for base_type, layer_cls in layer_classes.items():
        if isinstance(base, base_type):
            if base_type is nn.Linear:
                align_fan_in_fan_out(base, config)
                kwargs["fan_in_fan_out"] = config.fan_in_fan_out
            return layer_cls(target, adapter_name, **kwargs)
    supported = ", ".join(f"`torch.nn.{t.__name__}`" for t in layer_classes)
    raise UnsupportedLayerError(
        f"Target module {base} (type {type(base).__name__}) is not supported by {method}. Currently, only "
        f"{supported} are supported; remove it from target_modules."
    )
