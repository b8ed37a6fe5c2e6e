"""BEFT: bias-efficient fine-tuning, a trained bias on the value projections (arXiv 2509.15974)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_BEFT_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import BeftConfig
from .layer import BeftLayer, Linear
from .model import BeftModel

# peft registers BEFT as mixed-compatible, but its PeftMixedModel does not accept BEFT; peftkit's mixed
# model accepts exactly the methods registered as compatible, so BEFT is not one (as in peft's mixed model)
register_peft_method(
    name="beft",
    config_cls=BeftConfig,
    model_cls=BeftModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_BEFT_TARGET_MODULES_MAPPING,
)

__all__ = ["BeftConfig", "BeftLayer", "BeftModel", "Linear"]
