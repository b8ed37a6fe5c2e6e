"""The adapter methods. Importing this package registers each of them."""

from .adalora import AdaLoraConfig, AdaLoraModel
from .adaption_prompt import AdaptionPromptConfig, AdaptionPromptModel
from .boft import BOFTConfig, BOFTModel
from .cartridge import CartridgeConfig, CartridgeEncoder
from .fourierft import FourierFTConfig, FourierFTModel
from .glora import GloraConfig, GloraModel
from .hra import HRAConfig, HRAModel
from .ia3 import IA3Config, IA3Model
from .ln_tuning import LNTuningConfig, LNTuningModel
from .loha import LoHaConfig, LoHaModel
from .lokr import LoKrConfig, LoKrModel
from .lora import LoraConfig, LoraModel, LoraRuntimeConfig
from .multitask_prompt_tuning import (
    MultitaskPromptEmbedding,
    MultitaskPromptTuningConfig,
    MultitaskPromptTuningInit,
)
from .oft import OFTConfig, OFTModel
from .osf import OSFConfig, OSFModel
from .p_tuning import PromptEncoder, PromptEncoderConfig, PromptEncoderReparameterizationType
from .peanut import PeanutConfig, PeanutModel
from .prefix_tuning import PrefixEncoder, PrefixTuningConfig
from .prompt_tuning import PromptEmbedding, PromptTuningConfig, PromptTuningInit
from .psoft import PsoftConfig, PsoftModel
from .vera import VeraConfig, VeraModel

__all__ = [
    "AdaLoraConfig",
    "AdaLoraModel",
    "AdaptionPromptConfig",
    "AdaptionPromptModel",
    "BOFTConfig",
    "BOFTModel",
    "CartridgeConfig",
    "CartridgeEncoder",
    "FourierFTConfig",
    "FourierFTModel",
    "GloraConfig",
    "GloraModel",
    "HRAConfig",
    "HRAModel",
    "IA3Config",
    "IA3Model",
    "LNTuningConfig",
    "LNTuningModel",
    "LoHaConfig",
    "LoHaModel",
    "LoKrConfig",
    "LoKrModel",
    "LoraConfig",
    "LoraModel",
    "LoraRuntimeConfig",
    "OFTConfig",
    "OFTModel",
    "OSFConfig",
    "OSFModel",
    "MultitaskPromptEmbedding",
    "MultitaskPromptTuningConfig",
    "MultitaskPromptTuningInit",
    "PeanutConfig",
    "PeanutModel",
    "PrefixEncoder",
    "PrefixTuningConfig",
    "PromptEmbedding",
    "PromptEncoder",
    "PromptEncoderConfig",
    "PromptEncoderReparameterizationType",
    "PromptTuningConfig",
    "PromptTuningInit",
    "PsoftConfig",
    "PsoftModel",
    "VeraConfig",
    "VeraModel",
]
