"""Checks that many methods' configs make of their fields, with peft's messages, written once.

A config's `__post_init__` calls the ones that apply to it (peft checks the layer-selection rules for
some methods only, and peftkit raises where peft raises).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from ..utils.warnings import PeftWarning


def is_int(value: object) -> bool:
    """Whether `value` is an int (a bool is not: `True` is no rank)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_positive_int(value: object) -> bool:
    """Whether `value` is an int above 0 (not a bool)."""
    return is_int(value) and value > 0


def check_one_of(config: Any, name: str, choices: Sequence[object]) -> None:
    """The field `name` holds one of `choices`."""
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")


def check_dropout(config: Any, name: str) -> None:
    """The field `name` is a dropout probability in [0, 1)."""
    value = getattr(config, name)
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}.")


def check_no_layer_selection_with_regex(config: Any) -> None:
    """A regex `target_modules` (a str) names the modules itself: `layers_to_transform` and
    `layers_pattern` cannot narrow it (peft's rule)."""
    if isinstance(config.target_modules, str) and config.layers_to_transform is not None:
        raise ValueError("`layers_to_transform` cannot be used when `target_modules` is a str.")
    if isinstance(config.target_modules, str) and config.layers_pattern is not None:
        raise ValueError("`layers_pattern` cannot be used when `target_modules` is a str.")


def check_layers_pattern_has_indices(config: Any) -> None:
    """`layers_pattern` names the layer list that `layers_to_transform` indexes: alone it selects nothing."""
    if config.layers_pattern and config.layers_to_transform is None:
        raise ValueError("When `layers_pattern` is specified, `layers_to_transform` must also be specified.")


def check_layer_selection(config: Any) -> None:
    """Both rules above, in peft's order."""
    check_no_layer_selection_with_regex(config)
    check_layers_pattern_has_indices(config)


def warn_projections_not_saved(names: Sequence[str], seed_field: str = "projection_prng_key") -> None:
    """`save_projection=False`: the frozen random tensors `names` will be re-drawn from the seed on loading,
    which gives the same numbers only where torch's generator does."""
    what, verb, them = (names[0], "is", "it") if len(names) == 1 else (" and ".join(names), "are", "them")
    warnings.warn(
        f"save_projection=False: {what} {verb} not saved with the adapter but re-drawn from {seed_field} when "
        f"it is loaded. That reproduces {them} only where torch's generator gives the same numbers; set "
        f"save_projection=True to store {them} with the adapter.",
        PeftWarning,
    )
