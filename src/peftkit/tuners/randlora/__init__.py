"""RandLoRA: full-rank updates from frozen random bases scaled by trained diagonals (Albert et al., 2025)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_RANDLORA_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .bnb import Linear4bit, Linear8bitLt
from .config import RandLoraConfig
from .layer import Linear, RandLoraLayer
from .model import RandLoraModel

register_peft_method(
    name="randlora",
    config_cls=RandLoraConfig,
    model_cls=RandLoraModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_RANDLORA_TARGET_MODULES_MAPPING,
)

__all__ = ["Linear", "Linear4bit", "Linear8bitLt", "RandLoraConfig", "RandLoraLayer", "RandLoraModel"]
