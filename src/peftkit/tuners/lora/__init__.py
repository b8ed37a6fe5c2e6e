"""LoRA: low-rank adaptation (Hu et al., 2021), with rsLoRA and DoRA options."""

from ...utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from .._registration import register_peft_method
from .bdlora import BdLoraConfig
from .config import LoraConfig, LoraRuntimeConfig
from .conversion import convert_to_lora, save_as_lora
from .corda import CordaConfig
from .eva import EvaConfig, get_eva_state_dict, initialize_lora_eva_weights
from .layer import Conv1d, Conv2d, Conv3d, Embedding, Linear, LoraLayer
from .loftq import LoftQConfig
from .model import LoraModel
from .multihead_attention import MultiheadAttention
from .param_wrapper import ParamWrapper

register_peft_method(
    name="lora",
    config_cls=LoraConfig,
    model_cls=LoraModel,
    is_mixed_compatible=True,
    default_target_modules=TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
)

__all__ = [
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
