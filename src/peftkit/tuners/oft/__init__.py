"""OFT: orthogonal finetuning (Qiu et al., 2023), with the Cayley-Neumann parametrisation (Liu et al., 2024)."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_OFT_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .config import OFTConfig
from .layer import Conv2d, Embedding, Linear, OFTLayer, OFTRotationModule
from .model import OFTModel

register_peft_method(
    name="oft",
    config_cls=OFTConfig,
    model_cls=OFTModel,
    # PEFT's PeftMixedModel accepts OFT, though its PEFT_TYPE_TO_MIXED_MODEL_MAPPING does not list it
    mixed_model_support=True,
    default_target_modules=TRANSFORMERS_MODELS_TO_OFT_TARGET_MODULES_MAPPING,
)

__all__ = ["Conv2d", "Embedding", "Linear", "OFTConfig", "OFTLayer", "OFTModel", "OFTRotationModule"]
