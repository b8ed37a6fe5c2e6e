"""RoAd: 2-D rotary adaptation of layer outputs (Liao et al., 2024)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_ROAD_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .bnb import Linear4bit, Linear8bitLt
from .config import RoadConfig, RoadVariant
from .layer import Linear, RoadLayer
from .model import RoadModel

# peft registers RoAd as mixed-compatible but its PeftMixedModel refuses it (it is not in
# COMPATIBLE_TUNER_TYPES); peftkit's registry has one list for both, so RoAd stays out of it as PeftMixedModel
register_peft_method(
    name="road",
    config_cls=RoadConfig,
    model_cls=RoadModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_ROAD_TARGET_MODULES_MAPPING,
)

__all__ = ["Linear", "Linear4bit", "Linear8bitLt", "RoadConfig", "RoadLayer", "RoadModel", "RoadVariant"]
