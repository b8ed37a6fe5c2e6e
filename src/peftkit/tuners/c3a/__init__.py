"""C3A: circular convolution adaptation (Chen et al., 2024)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_C3A_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import C3AConfig
from .layer import C3ALayer, C3ALinear
from .model import C3AModel

register_peft_method(
    name="c3a",
    config_cls=C3AConfig,
    model_cls=C3AModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_C3A_TARGET_MODULES_MAPPING,
)

__all__ = ["C3AConfig", "C3ALayer", "C3ALinear", "C3AModel"]
