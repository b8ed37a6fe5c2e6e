"""WaveFT: fine-tuning sparse wavelet coefficients of the weight change (Bilican et al., 2025)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_WAVEFT_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import WaveFTConfig
from .layer import WaveFTLayer, WaveFTLinear
from .model import WaveFTModel

register_peft_method(
    name="waveft",
    config_cls=WaveFTConfig,
    model_cls=WaveFTModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_WAVEFT_TARGET_MODULES_MAPPING,
)

__all__ = ["WaveFTConfig", "WaveFTLayer", "WaveFTLinear", "WaveFTModel"]
