"""VB-LoRA: LoRA factors assembled from a shared bank of vectors (Li et al., 2024)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_VBLORA_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import VBLoRAConfig
from .layer import Linear, VBLoRALayer
from .model import VBLoRAModel

register_peft_method(
    name="vblora",
    config_cls=VBLoRAConfig,
    model_cls=VBLoRAModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_VBLORA_TARGET_MODULES_MAPPING,
)

__all__ = ["Linear", "VBLoRAConfig", "VBLoRALayer", "VBLoRAModel"]
