"""LoRA: low-rank adaptation (Hu et al., 2021), with its initialisations and variants."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from ...utils.lazy_exports import lazy_exports
from .._registration import register_peft_method
from .bdlora import BdLoraConfig
from .config import LoraConfig, LoraRuntimeConfig
from .conversion import convert_to_lora, save_as_lora
from .corda import CordaConfig
from .eva import EvaConfig, get_eva_state_dict, initialize_lora_eva_weights
from .layer import Conv1d, Conv2d, Conv3d, Embedding, Linear, LoraLayer
from .loftq import LoftQConfig
from .loraga import preprocess_loraga
from .model import LoraModel
from .multihead_attention import MultiheadAttention
from .param_wrapper import ParamWrapper
from .sub_configs import ArrowConfig, KasaConfig, LoraGAConfig, MontecloraConfig, VeloraConfig

# create_arrow_model builds a PeftModel, which lives above the methods: imported when first used
__getattr__, __dir__ = lazy_exports(globals(), {"create_arrow_model": "peftkit.arrow_model"})

register_peft_method(
    name="lora",
    config_cls=LoraConfig,
    model_cls=LoraModel,
    is_mixed_compatible=True,
    default_target_modules=TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
)

__all__ = [
    "ArrowConfig",
    "KasaConfig",
    "LoraGAConfig",
    "MontecloraConfig",
    "VeloraConfig",
    "create_arrow_model",
    "preprocess_loraga",
    "BdLoraConfig",
    "CordaConfig",
    "EvaConfig",
    "LoftQConfig",
    "ParamWrapper",
    "get_eva_state_dict",
    "initialize_lora_eva_weights",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "Embedding",
    "Linear",
    "LoraConfig",
    "LoraLayer",
    "LoraModel",
    "LoraRuntimeConfig",
    "MultiheadAttention",
    "convert_to_lora",
    "save_as_lora",
]
