"""Poly: a routed bank of LoRA skills for multi-task learning (Ponti et al., 2022; MHR, Caccia et al., 2022)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_POLY_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import PolyConfig
from .layer import Linear, PolyLayer
from .model import PolyModel

register_peft_method(
    name="poly",
    config_cls=PolyConfig,
    model_cls=PolyModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_POLY_TARGET_MODULES_MAPPING,
)

__all__ = ["Linear", "PolyConfig", "PolyLayer", "PolyModel"]
