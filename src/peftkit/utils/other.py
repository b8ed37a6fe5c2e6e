"""Small helpers shared across the package."""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

# PEFT's paths for what integrations and user code import from `peft.utils.other` (see peftkit.compat)
from .auxiliary_wrapper import AuxiliaryTrainingWrapper
from .device import infer_device
from .fsdp import fsdp_auto_wrap_policy
from .lazy_exports import lazy_exports
from .modules_to_save import ModulesToSaveWrapper

# The trainable-tokens wrapper belongs to its method, a floor above this one.
__getattr__, __dir__ = lazy_exports(
    globals(), {"TrainableTokensWrapper": "peftkit.tuners.trainable_tokens.wrapper"}
)

__all__ = [
    "AuxiliaryTrainingWrapper",
    "ModulesToSaveWrapper",
    "TrainableTokensWrapper",  # noqa: F822  (resolved by __getattr__)
    "fsdp_auto_wrap_policy",
    "get_pattern_key",
    "get_submodules",
    "infer_device",
]


def get_submodules(model: nn.Module, key: str) -> tuple[nn.Module, nn.Module, str]:
    """Return (parent, module, attribute name) for the dotted module name `key`.

    The root (`key=""`) is its own parent, with the empty name, as in PEFT: callers that walk
    `named_modules()` meet it first.
    """
    parent_name, _, target_name = key.rpartition(".")
    return model.get_submodule(parent_name), model.get_submodule(key), target_name


def get_pattern_key(pattern_keys: Iterable[str], key: str) -> str:
    """The first of `pattern_keys` (a `rank_pattern`/`alpha_pattern`-style dict's keys, regexes) that
    matches the end of module name `key` at a name boundary; `key` itself when none does."""
    for pattern in pattern_keys:
        if re.match(rf"(.*\.)?({pattern})$", key):
            return pattern
    return key
