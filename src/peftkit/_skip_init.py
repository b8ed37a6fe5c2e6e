"""Build adapter layers without running their default initialisation (the caller initialises them)."""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def empty_linear(in_features: int, out_features: int, bias: bool) -> nn.Linear:
    """An `nn.Linear` with uninitialised parameters, built without its default initialisation.

    Adapter factors are initialised right after creation, so the default kaiming initialisation (and even
    building on meta and materialising) was most of `add_adapter`'s time. Tensors go to the current
    default device, which respects a surrounding `torch.device("meta")` (low_cpu_mem_usage).
    """
    layer = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(layer)
    # straight into the module's dicts: nn.Module.__setattr__ type-checks each value, and an adapter
    # builds hundreds of these factors
    layer.__dict__.update(in_features=in_features, out_features=out_features)
    layer._parameters["weight"] = nn.Parameter(torch.empty(out_features, in_features))
    layer._parameters["bias"] = nn.Parameter(torch.empty(out_features)) if bias else None
    return layer


def skip_init(module_cls: type[ModuleT], *args: Any, **kwargs: Any) -> ModuleT:
    """`module_cls(*args, **kwargs)` with uninitialised parameters on the current default device."""
    module = module_cls(*args, device="meta", **kwargs)
    return module.to_empty(device=torch.get_default_device())
