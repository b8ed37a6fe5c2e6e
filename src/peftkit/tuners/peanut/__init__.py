"""PEANuT: a small network of the base weight gives the weight change (Zhong et al., 2024)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_PEANUT_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import PeanutConfig
from .layer import Linear, PeanutLayer
from .model import PeanutModel

register_peft_method(
    name="peanut",
    config_cls=PeanutConfig,
    model_cls=PeanutModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_PEANUT_TARGET_MODULES_MAPPING,
)

__all__ = ["Linear", "PeanutConfig", "PeanutLayer", "PeanutModel"]
