"""AdaLoRA: adaptive budget allocation for parameter-efficient fine-tuning (Zhang et al., 2023)."""

from ...mapping import register_peft_method
from ...utils.peft_types import PeftType
from .allocator import RankAllocator
from .config import AdaLoraConfig
from .layer import AdaLoraLayer, SVDConv2d, SVDLinear
from .model import AdaLoraModel

register_peft_method(
    peft_type=PeftType.ADALORA, config_cls=AdaLoraConfig, model_cls=AdaLoraModel, prefix="lora_"
)

__all__ = ["AdaLoraConfig", "AdaLoraLayer", "AdaLoraModel", "RankAllocator", "SVDConv2d", "SVDLinear"]
