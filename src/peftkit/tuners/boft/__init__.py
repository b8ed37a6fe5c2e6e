"""BOFT: orthogonal finetuning via butterfly factorisation (Liu et al., 2024), as peft 0.21 computes it."""

from ...mapping import register_peft_method
from ...utils.peft_types import PeftType
from .config import BOFTConfig
from .layer import BOFTLayer, Conv2d, Linear
from .model import BOFTModel

register_peft_method(peft_type=PeftType.BOFT, config_cls=BOFTConfig, model_cls=BOFTModel, prefix="boft_")

__all__ = ["BOFTConfig", "BOFTLayer", "BOFTModel", "Conv2d", "Linear"]
