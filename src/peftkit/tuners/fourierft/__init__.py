"""FourierFT: fine-tuning a sparse spectrum of the weight change (Gao et al., 2024)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import FourierFTConfig
from .layer import FourierFTLayer, FourierFTLinear
from .model import FourierFTModel

register_peft_method(
    name="fourierft",
    config_cls=FourierFTConfig,
    model_cls=FourierFTModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING,
)

__all__ = ["FourierFTConfig", "FourierFTLayer", "FourierFTLinear", "FourierFTModel"]
