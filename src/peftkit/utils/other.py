"""Small helpers shared across the package."""

from __future__ import annotations

from torch import nn


def get_submodules(model: nn.Module, key: str) -> tuple[nn.Module, nn.Module, str]:
    """Return (parent, module, attribute name) for the dotted module name `key`."""
    parent_name, _, target_name = key.rpartition(".")
    parent = model.get_submodule(parent_name)
    return parent, getattr(parent, target_name), target_name
