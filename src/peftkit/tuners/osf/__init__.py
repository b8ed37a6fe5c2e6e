"""OSF: Orthogonal Subspace Fine-tuning, training a weight's low singular directions orthogonally to its top ones."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_OSF_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import OSFConfig
from .layer import Linear, OSFLayer
from .model import OSFModel

register_peft_method(
    name="osf",
    config_cls=OSFConfig,
    model_cls=OSFModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_OSF_TARGET_MODULES_MAPPING,
)

__all__ = ["Linear", "OSFConfig", "OSFLayer", "OSFModel"]
