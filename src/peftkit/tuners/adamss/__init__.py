"""AdaMSS: low-rank updates in subspaces clustered from the weight's singular vectors, with adaptive
subspace allocation (ASA). The Trainer callback is `peftkit.tuners.adamss.asa_callback.AdamssAsaCallback`."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_ADAMSS_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import AdamssConfig
from .layer import AdamssLayer, Linear
from .model import AdamssModel

register_peft_method(
    name="adamss",
    config_cls=AdamssConfig,
    model_cls=AdamssModel,
    prefix="adamss_",
    default_target_modules=TRANSFORMERS_MODELS_TO_ADAMSS_TARGET_MODULES_MAPPING,
)

__all__ = ["AdamssConfig", "AdamssLayer", "AdamssModel", "Linear"]
