"""OFT: orthogonal finetuning (Qiu et al., 2023), with the Cayley-Neumann parametrisation (Liu et al., 2024)."""

from ...mapping import register_peft_method
from ...utils.peft_types import PeftType
from .config import OFTConfig
from .layer import Conv2d, Embedding, Linear, OFTLayer, OFTRotationModule
from .model import OFTModel

register_peft_method(peft_type=PeftType.OFT, config_cls=OFTConfig, model_cls=OFTModel, prefix="oft_")

__all__ = ["Conv2d", "Embedding", "Linear", "OFTConfig", "OFTLayer", "OFTModel", "OFTRotationModule"]
