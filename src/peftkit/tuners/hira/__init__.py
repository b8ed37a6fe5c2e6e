"""HiRA: Hadamard high-rank adaptation, `delta_W = W0 * (B A)` (Huang et al., ICLR 2025)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_HIRA_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .bnb import Linear4bit, Linear8bitLt
from .config import HiraConfig
from .layer import Conv2d, Conv3d, Embedding, HiraLayer, Linear
from .model import HiraModel

register_peft_method(
    name="hira",
    config_cls=HiraConfig,
    model_cls=HiraModel,
    # PEFT lists it in PEFT_TYPE_TO_MIXED_MODEL_MAPPING, but its PeftMixedModel refuses it: so does peftkit's
    is_mixed_compatible=True,
    mixed_model_support=False,
    default_target_modules=TRANSFORMERS_MODELS_TO_HIRA_TARGET_MODULES_MAPPING,
)

__all__ = [
    "Conv2d",
    "Conv3d",
    "Embedding",
    "HiraConfig",
    "HiraLayer",
    "HiraModel",
    "Linear",
    "Linear4bit",
    "Linear8bitLt",
]
