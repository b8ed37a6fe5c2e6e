"""The adapter methods. Importing this package registers each of them."""

from .adalora import AdaLoraConfig, AdaLoraModel
from .adaption_prompt import AdaptionPromptConfig, AdaptionPromptModel
from .beft import BeftConfig, BeftModel
from .boft import BOFTConfig, BOFTModel
from .c3a import C3AConfig, C3AModel
from .cpt import CPTConfig, CPTEmbedding
from .deft import DeftConfig, DeftModel
from .delora import DeloraConfig, DeloraModel
from .fourierft import FourierFTConfig, FourierFTModel
from .frod import FrodConfig, FrodModel
from .gralora import GraloraConfig, GraloraModel
from .hra import HRAConfig, HRAModel
from .ia3 import IA3Config, IA3Model
from .lily import LilyConfig, LilyModel
from .ln_tuning import LNTuningConfig, LNTuningModel
from .loha import LoHaConfig, LoHaModel
from .lokr import LoKrConfig, LoKrModel
from .lora import (
    BdLoraConfig,
    EvaConfig,
    LoftQConfig,
    LoraConfig,
    LoraModel,
    LoraRuntimeConfig,
    convert_to_lora,
    get_eva_state_dict,
    initialize_lora_eva_weights,
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
from .p_tuning import PromptEncoder, PromptEncoderConfig, PromptEncoderReparameterizationType
from .poly import PolyConfig, PolyModel
from .prefix_tuning import PrefixEncoder, PrefixTuningConfig
from .prompt_tuning import PromptEmbedding, PromptTuningConfig, PromptTuningInit
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

__all__ = [
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
    "MultitaskPromptEmbedding",
    "MultitaskPromptTuningConfig",
    "MultitaskPromptTuningInit",
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
    "VeraConfig",
    "VeraModel",
    "WaveFTConfig",
    "WaveFTModel",
    "XLoraConfig",
    "XLoraModel",
]
