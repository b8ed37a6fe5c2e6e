"""HRA: Householder reflection adaptation (Yuan et al., 2024)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_HRA_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import HRAConfig
from .layer import HRAConv2d, HRALayer, HRALinear
from .model import HRAModel

register_peft_method(
    name="hra",
    config_cls=HRAConfig,
    model_cls=HRAModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_HRA_TARGET_MODULES_MAPPING,
)

__all__ = ["HRAConfig", "HRAConv2d", "HRALayer", "HRALinear", "HRAModel"]
