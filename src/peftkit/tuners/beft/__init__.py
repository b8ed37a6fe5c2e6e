"""BEFT: bias-efficient fine-tuning, a trained bias on the value projections (arXiv 2509.15974)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_BEFT_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import BeftConfig
from .layer import BeftLayer, Linear
from .model import BeftModel

register_peft_method(
    name="beft",
    config_cls=BeftConfig,
    model_cls=BeftModel,
    # PEFT lists it in PEFT_TYPE_TO_MIXED_MODEL_MAPPING, but its PeftMixedModel refuses it: so does peftkit's
    is_mixed_compatible=True,
    mixed_model_support=False,
    default_target_modules=TRANSFORMERS_MODELS_TO_BEFT_TARGET_MODULES_MAPPING,
)

__all__ = ["BeftConfig", "BeftLayer", "BeftModel", "Linear"]
