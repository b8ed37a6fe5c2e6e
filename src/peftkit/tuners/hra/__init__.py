"""HRA: Householder reflection adaptation (Yuan et al., 2024)."""

from ...mapping import register_peft_method
from ...utils.peft_types import PeftType
from .config import HRAConfig
from .layer import HRAConv2d, HRALayer, HRALinear
from .model import HRAModel

register_peft_method(peft_type=PeftType.HRA, config_cls=HRAConfig, model_cls=HRAModel, prefix="hra_")

__all__ = ["HRAConfig", "HRAConv2d", "HRALayer", "HRALinear", "HRAModel"]
