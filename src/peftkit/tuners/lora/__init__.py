"""LoRA: low-rank adaptation (Hu et al., 2021), with rsLoRA and DoRA options."""

from ...mapping import register_peft_method
from ...utils.peft_types import PeftType
from .bdlora import BdLoraConfig
from .config import LoraConfig, LoraRuntimeConfig
from .layer import Conv1d, Conv2d, Conv3d, Embedding, Linear, LoraLayer
from .model import LoraModel

register_peft_method(peft_type=PeftType.LORA, config_cls=LoraConfig, model_cls=LoraModel, prefix="lora_")

__all__ = [
    "BdLoraConfig",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "Embedding",
    "Linear",
    "LoraConfig",
    "LoraLayer",
    "LoraModel",
    "LoraRuntimeConfig",
]
