"""The tables `register_peft_method` (in `peftkit.mapping`) fills, one entry per method and PeftType.

They live below the tuner framework so that `BaseTuner` can read a method's default targets; the
registration function, which checks the tuner classes, lives above it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import PEFT_TYPE_TO_CONFIG_MAPPING
from ..utils.peft_types import PeftType

__all__ = [
    "MIXED_MODEL_TYPES",
    "PEFT_TYPE_TO_CONFIG_MAPPING",
    "PEFT_TYPE_TO_DEFAULT_TARGET_MODULES",
    "PEFT_TYPE_TO_MIXED_MODEL_MAPPING",
    "PEFT_TYPE_TO_PREFIX_MAPPING",
    "PEFT_TYPE_TO_TUNER_MAPPING",
    "default_target_modules",
    "mixed_compatible_types",
]

PEFT_TYPE_TO_TUNER_MAPPING: dict[PeftType, type] = {}
PEFT_TYPE_TO_PREFIX_MAPPING: dict[PeftType, str] = {}
PEFT_TYPE_TO_MIXED_MODEL_MAPPING: dict[PeftType, type] = {}
# The methods a PeftMixedModel accepts, in registration order (not always those of the mapping above: see
# `register_peft_method`'s `mixed_model_support`)
MIXED_MODEL_TYPES: list[PeftType] = []
# model_type -> the module names (or one regex) a method targets when a config leaves target_modules unset
PEFT_TYPE_TO_DEFAULT_TARGET_MODULES: dict[PeftType, Mapping[str, Any]] = {}


def default_target_modules(peft_type: PeftType) -> Mapping[str, Any]:
    """The default targets per `model_type` registered for `peft_type` (empty when it has none)."""
    return PEFT_TYPE_TO_DEFAULT_TARGET_MODULES.get(peft_type, {})


# The order in which PEFT lists the methods its mixed model accepts; it only orders the list (which methods
# are in it is decided by registration), so that peftkit's tuple and messages read as PEFT's do.
_PEFT_MIXED_LISTING_ORDER = (
    PeftType.LORA,
    PeftType.LOHA,
    PeftType.LOKR,
    PeftType.ADALORA,
    PeftType.OFT,
    PeftType.SHIRA,
)


def mixed_compatible_types() -> tuple[PeftType, ...]:
    """The methods a PeftMixedModel accepts: in PEFT's order, then any others in the order they were
    registered."""
    known = [t for t in _PEFT_MIXED_LISTING_ORDER if t in MIXED_MODEL_TYPES]
    return tuple(known + [t for t in MIXED_MODEL_TYPES if t not in known])
