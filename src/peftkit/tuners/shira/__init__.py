"""SHiRA: sparse high-rank adapters, a fixed sparse set of each weight's entries trains (Bhardwaj et al., 2024)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_SHIRA_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import ShiraConfig
from .layer import Linear, ShiraLayer
from .model import ShiraModel

register_peft_method(
    name="shira",
    config_cls=ShiraConfig,
    model_cls=ShiraModel,
    is_mixed_compatible=True,
    default_target_modules=TRANSFORMERS_MODELS_TO_SHIRA_TARGET_MODULES_MAPPING,
)

__all__ = ["Linear", "ShiraConfig", "ShiraLayer", "ShiraModel"]
