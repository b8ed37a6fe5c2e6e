"""RoAd: 2-D rotary adaptation of layer outputs (Liao et al., 2024)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_ROAD_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .bnb import Linear4bit, Linear8bitLt
from .config import RoadConfig, RoadVariant
from .layer import Linear, RoadLayer
from .model import RoadModel

register_peft_method(
    name="road",
    config_cls=RoadConfig,
    model_cls=RoadModel,
    # PEFT lists it in PEFT_TYPE_TO_MIXED_MODEL_MAPPING, but its PeftMixedModel refuses it: so does peftkit's
    is_mixed_compatible=True,
    mixed_model_support=False,
    default_target_modules=TRANSFORMERS_MODELS_TO_ROAD_TARGET_MODULES_MAPPING,
)

__all__ = ["Linear", "Linear4bit", "Linear8bitLt", "RoadConfig", "RoadLayer", "RoadModel", "RoadVariant"]
