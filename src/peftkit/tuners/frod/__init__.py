"""FRoD: full-rank efficient fine-tuning with rotational degrees (AAAI 2026)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_FROD_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import FrodConfig
from .layer import FrodLayer, Linear
from .model import FrodModel

register_peft_method(
    name="frod",
    config_cls=FrodConfig,
    model_cls=FrodModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_FROD_TARGET_MODULES_MAPPING,
)

__all__ = ["FrodConfig", "FrodLayer", "FrodModel", "Linear"]
