"""BOFT: orthogonal finetuning via butterfly factorisation (Liu et al., 2024), as peft 0.21 computes it."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_BOFT_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import BOFTConfig
from .layer import BOFTLayer, Conv2d, Linear
from .model import BOFTModel

register_peft_method(
    name="boft",
    config_cls=BOFTConfig,
    model_cls=BOFTModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_BOFT_TARGET_MODULES_MAPPING,
)

__all__ = ["BOFTConfig", "BOFTLayer", "BOFTModel", "Conv2d", "Linear"]
