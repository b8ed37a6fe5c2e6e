"""Mixed adapter types on one model (PEFT's `PeftMixedModel`)."""

from typing import Any

from . import model as _model
from .model import MixedModel

__all__ = ["COMPATIBLE_TUNER_TYPES", "MixedModel"]


def __getattr__(name: str) -> Any:
    # COMPATIBLE_TUNER_TYPES is computed from the registry when asked for (see .model)
    return getattr(_model, name)
