"""Lily: low-rank interconnected adaptation across layers (arXiv 2407.09946)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_LILY_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import LilyConfig
from .layer import LilyLayer, Linear
from .model import LilyModel

register_peft_method(
    name="lily",
    config_cls=LilyConfig,
    model_cls=LilyModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_LILY_TARGET_MODULES_MAPPING,
)

__all__ = ["LilyConfig", "LilyLayer", "LilyModel", "Linear"]
