"""The adapter methods. Importing this package registers each of them."""

from ..utils.lazy_exports import lazy_exports
from .adalora import AdaLoraConfig, AdaLoraModel
from .adamss import AdamssConfig, AdamssModel
from .adaption_prompt import AdaptionPromptConfig, AdaptionPromptModel
from .beft import BeftConfig, BeftModel
from .boft import BOFTConfig, BOFTModel
from .c3a import C3AConfig, C3AModel
from .cartridge import CartridgeConfig, CartridgeEncoder
from .cpt import CPTConfig, CPTEmbedding
from .deft import DeftConfig, DeftModel
from .delora import DeloraConfig, DeloraModel
from .fourierft import FourierFTConfig, FourierFTModel
from .frod import FrodConfig, FrodModel
from .glora import GloraConfig, GloraModel
from .gralora import GraloraConfig, GraloraModel
from .hira import HiraConfig, HiraModel
from .hra import HRAConfig, HRAModel
from .ia3 import IA3Config, IA3Model
from .lily import LilyConfig, LilyModel
from .ln_tuning import LNTuningConfig, LNTuningModel
from .loha import LoHaConfig, LoHaModel
from .lokr import LoKrConfig, LoKrModel
from .lora import (
    ArrowConfig,
    BdLoraConfig,
    EvaConfig,
    KasaConfig,
    LoftQConfig,
    LoraConfig,
    LoraGAConfig,
    LoraModel,
    LoraRuntimeConfig,
    MontecloraConfig,
    VeloraConfig,
    convert_to_lora,
    get_eva_state_dict,
    initialize_lora_eva_weights,
    preprocess_loraga,
    save_as_lora,
)
from .miss import MissConfig, MissModel
from .mixed import MixedModel
from .multitask_prompt_tuning import (
    MultitaskPromptEmbedding,
    MultitaskPromptTuningConfig,
    MultitaskPromptTuningInit,
)
from .oft import OFTConfig, OFTModel
from .osf import OSFConfig, OSFModel
from .p_tuning import PromptEncoder, PromptEncoderConfig, PromptEncoderReparameterizationType
from .peanut import PeanutConfig, PeanutModel
from .poly import PolyConfig, PolyModel
from .prefix_tuning import PrefixEncoder, PrefixTuningConfig
from .prompt_tuning import PromptEmbedding, PromptTuningConfig, PromptTuningInit
from .psoft import PsoftConfig, PsoftModel
from .pvera import PveraConfig, PveraModel
from .randlora import RandLoraConfig, RandLoraModel
from .road import RoadConfig, RoadModel
from .shadow import ShadowConfig, ShadowModel
from .shira import ShiraConfig, ShiraModel
from .supertuning import SupertuningConfig, SupertuningModel
from .tinylora import TinyLoraConfig, TinyLoraModel
from .trainable_tokens import TrainableTokensConfig, TrainableTokensModel
from .unilora import UniLoraConfig, UniLoraModel
from .vblora import VBLoRAConfig, VBLoRAModel
from .vera import VeraConfig, VeraModel
from .waveft import WaveFTConfig, WaveFTModel
from .xlora import XLoraConfig, XLoraModel

# create_arrow_model builds a PeftModel (a floor above the methods): imported when first used
__getattr__, __dir__ = lazy_exports(globals(), {"create_arrow_model": "peftkit.arrow_model"})

__all__ = [
    "ArrowConfig",
    "KasaConfig",
    "LoraGAConfig",
    "MontecloraConfig",
    "VeloraConfig",
    "create_arrow_model",
    "preprocess_loraga",
    "BdLoraConfig",
    "EvaConfig",
    "LoftQConfig",
    "MixedModel",
    "TrainableTokensConfig",
    "TrainableTokensModel",
    "convert_to_lora",
    "get_eva_state_dict",
    "initialize_lora_eva_weights",
    "save_as_lora",
    "AdaLoraConfig",
    "AdaLoraModel",
    "AdamssConfig",
    "AdamssModel",
    "AdaptionPromptConfig",
    "AdaptionPromptModel",
    "BeftConfig",
    "BeftModel",
    "BOFTConfig",
    "BOFTModel",
    "DeloraConfig",
    "DeloraModel",
    "DeftConfig",
    "DeftModel",
    "C3AConfig",
    "C3AModel",
    "CPTConfig",
    "CPTEmbedding",
    "FourierFTConfig",
    "FourierFTModel",
    "GraloraConfig",
    "GraloraModel",
    "FrodConfig",
    "FrodModel",
    "HiraConfig",
    "HiraModel",
    "CartridgeConfig",
    "CartridgeEncoder",
    "GloraConfig",
    "GloraModel",
    "HRAConfig",
    "HRAModel",
    "IA3Config",
    "IA3Model",
    "LilyConfig",
    "LilyModel",
    "LNTuningConfig",
    "LNTuningModel",
    "LoHaConfig",
    "LoHaModel",
    "LoKrConfig",
    "LoKrModel",
    "LoraConfig",
    "LoraModel",
    "LoraRuntimeConfig",
    "MissConfig",
    "MissModel",
    "OFTConfig",
    "OFTModel",
    "PolyConfig",
    "PolyModel",
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
    "ShiraConfig",
    "ShiraModel",
    "PveraConfig",
    "PveraModel",
    "ShadowConfig",
    "ShadowModel",
    "SupertuningConfig",
    "SupertuningModel",
    "RoadConfig",
    "RoadModel",
    "UniLoraConfig",
    "UniLoraModel",
    "RandLoraConfig",
    "RandLoraModel",
    "TinyLoraConfig",
    "TinyLoraModel",
    "VBLoRAConfig",
    "VBLoRAModel",
    "PsoftConfig",
    "PsoftModel",
    "VeraConfig",
    "VeraModel",
    "WaveFTConfig",
    "WaveFTModel",
    "XLoraConfig",
    "XLoraModel",
]
