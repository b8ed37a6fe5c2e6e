"""GraLoRA: granular low-rank adaptation, a k x k grid of block-wise LoRAs (Jung et al., 2025)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_GRALORA_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import GraloraConfig
from .layer import GraloraLayer, Linear
from .model import GraloraModel

register_peft_method(
    name="gralora",
    config_cls=GraloraConfig,
    model_cls=GraloraModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_GRALORA_TARGET_MODULES_MAPPING,
)

__all__ = ["GraloraConfig", "GraloraLayer", "GraloraModel", "Linear"]
