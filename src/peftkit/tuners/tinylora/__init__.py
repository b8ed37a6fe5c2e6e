"""TinyLoRA: a few trained numbers that mix fixed random matrices in the base weights' SVD subspace
("Learning to Reason in 13 Parameters", arXiv:2602.04118)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_TINYLORA_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import TinyLoraConfig
from .layer import Embedding, Linear, TinyLoraLayer
from .model import TinyLoraModel

register_peft_method(
    name="tinylora",
    config_cls=TinyLoraConfig,
    model_cls=TinyLoraModel,
    default_target_modules=TRANSFORMERS_MODELS_TO_TINYLORA_TARGET_MODULES_MAPPING,
)

__all__ = ["Embedding", "Linear", "TinyLoraConfig", "TinyLoraLayer", "TinyLoraModel"]
