"""PSOFT: an orthogonal transformation inside the weight's principal subspace."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_PSOFT_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import PsoftConfig
from .layer import Linear, PsoftLayer
from .model import PsoftModel

register_peft_method(
    name="psoft",
    config_cls=PsoftConfig,
    model_cls=PsoftModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_PSOFT_TARGET_MODULES_MAPPING,
)

__all__ = ["Linear", "PsoftConfig", "PsoftLayer", "PsoftModel"]
