"""FourierFT: fine-tuning a sparse spectrum of the weight change (Gao et al., 2024)."""

from ...mapping import register_peft_method
from ...utils.peft_types import PeftType
from .config import FourierFTConfig
from .layer import FourierFTLayer, FourierFTLinear
from .model import FourierFTModel

register_peft_method(
    peft_type=PeftType.FOURIERFT, config_cls=FourierFTConfig, model_cls=FourierFTModel, prefix="fourierft_"
)

__all__ = ["FourierFTConfig", "FourierFTLayer", "FourierFTLinear", "FourierFTModel"]
