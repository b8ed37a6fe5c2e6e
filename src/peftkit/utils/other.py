"""Small helpers shared across the package."""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

# PEFT's paths for what integrations import from `peft.utils.other` (see peftkit.compat); PEFT's
# AuxiliaryTrainingWrapper is the base class of its modules_to_save wrapper, ours is that wrapper
from .fsdp import fsdp_auto_wrap_policy
from .modules_to_save import ModulesToSaveWrapper as AuxiliaryTrainingWrapper

__all__ = ["AuxiliaryTrainingWrapper", "fsdp_auto_wrap_policy", "get_pattern_key", "get_submodules"]


def get_submodules(model: nn.Module, key: str) -> tuple[nn.Module, nn.Module, str]:
    """Return (parent, module, attribute name) for the dotted module name `key`."""
    parent_name, _, target_name = key.rpartition(".")
    parent = model.get_submodule(parent_name)
    return parent, getattr(parent, target_name), target_name


def get_pattern_key(pattern_keys: Iterable[str], key: str) -> str:
    """The first of `pattern_keys` (a `rank_pattern`/`alpha_pattern`-style dict's keys, regexes) that
    matches the end of module name `key` at a name boundary; `key` itself when none does."""
    for pattern in pattern_keys:
        if re.match(rf"(.*\.)?({pattern})$", key):
            return pattern
    return key
