"""AdaLoRA: adaptive budget allocation for parameter-efficient fine-tuning (Zhang et al., 2023)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .allocator import RankAllocator
from .config import AdaLoraConfig
from .layer import AdaLoraLayer, SVDConv2d, SVDLinear
from .model import AdaLoraModel

register_peft_method(
    name="adalora",
    config_cls=AdaLoraConfig,
    model_cls=AdaLoraModel,
    is_mixed_compatible=True,
    default_target_modules=TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING,
)

__all__ = ["AdaLoraConfig", "AdaLoraLayer", "AdaLoraModel", "RankAllocator", "SVDConv2d", "SVDLinear"]
