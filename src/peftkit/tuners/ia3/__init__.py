"""IA3: infused adapter by inhibiting and amplifying inner activations (Liu et al., 2022)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import IA3Config
from .layer import Conv2d, Conv3d, IA3Layer, Linear
from .model import IA3Model

register_peft_method(
    name="ia3",
    config_cls=IA3Config,
    model_cls=IA3Model,
    # PEFT lists it in PEFT_TYPE_TO_MIXED_MODEL_MAPPING, but its PeftMixedModel refuses it: so does peftkit's
    is_mixed_compatible=True,
    mixed_model_support=False,
    default_target_modules=TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
)

__all__ = ["Conv2d", "Conv3d", "IA3Config", "IA3Layer", "IA3Model", "Linear"]
