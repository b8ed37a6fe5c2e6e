"""peftkit: parameter-efficient fine-tuning for PyTorch and transformers, a drop-in for Hugging Face PEFT.

from peftkit import LoraConfig, get_peft_model
model = get_peft_model(base_model, LoraConfig(r=16, target_modules="all-linear", task_type="CAUSAL_LM"))
"""

from ._version import __version__
from .arrow_model import create_arrow_model
from .auto import (
    AutoPeftModel,
    AutoPeftModelForCausalLM,
    AutoPeftModelForFeatureExtraction,
    AutoPeftModelForQuestionAnswering,
    AutoPeftModelForSeq2SeqLM,
    AutoPeftModelForSequenceClassification,
    AutoPeftModelForTokenClassification,
)
from .config import PeftConfig, PeftConfigMixin, PromptLearningConfig
from .helpers import find_kappa_target_modules
from .mapping import (
    PEFT_TYPE_TO_CONFIG_MAPPING,
    PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
    PEFT_TYPE_TO_TUNER_MAPPING,
    get_peft_config,
    inject_adapter_in_model,
    register_peft_method,
)
from .mapping_func import get_peft_model
from .mixed_model import PeftMixedModel
from .peft_model import (
    MODEL_TYPE_TO_PEFT_MODEL_MAPPING,
    PeftModel,
    PeftModelForCausalLM,
    PeftModelForFeatureExtraction,
    PeftModelForQuestionAnswering,
    PeftModelForSeq2SeqLM,
    PeftModelForSequenceClassification,
    PeftModelForTokenClassification,
    get_layer_status,
    get_model_status,
)
from .persistence.base_state_dict import get_base_model_state_dict, set_base_model_state_dict
from .tuners import LoraConfig, LoraModel, LoraRuntimeConfig  # registers the methods
from .tuners.adalora import AdaLoraConfig, AdaLoraModel
from .tuners.adamss import AdamssConfig, AdamssModel
from .tuners.adaption_prompt import AdaptionPromptConfig, AdaptionPromptModel
from .tuners.beft import BeftConfig, BeftModel
from .tuners.boft import BOFTConfig, BOFTModel
from .tuners.c3a import C3AConfig, C3AModel
from .tuners.cartridge import CartridgeConfig, CartridgeEncoder
from .tuners.cartridge.utils import (
    compose_cartridge_adapters,
    initialize_kv_prefix_from_past_key_values,
    initialize_kv_prefix_from_text,
    prompt_embeddings_from_past_key_values,
)
from .tuners.cpt import CPTConfig, CPTEmbedding
from .tuners.deft import DeftConfig, DeftModel
from .tuners.delora import DeloraConfig, DeloraModel
from .tuners.fourierft import FourierFTConfig, FourierFTModel
from .tuners.frod import FrodConfig, FrodModel
from .tuners.glora import GloraConfig, GloraModel
from .tuners.gralora import GraloraConfig, GraloraModel
from .tuners.hira import HiraConfig, HiraModel
from .tuners.hra import HRAConfig, HRAModel
from .tuners.ia3 import IA3Config, IA3Model
from .tuners.lily import LilyConfig, LilyModel
from .tuners.ln_tuning import LNTuningConfig, LNTuningModel
from .tuners.loha import LoHaConfig, LoHaModel
from .tuners.lokr import LoKrConfig, LoKrModel
from .tuners.lora import (
    ArrowConfig,
    BdLoraConfig,
    EvaConfig,
    KasaConfig,
    LoftQConfig,
    LoraGAConfig,
    MontecloraConfig,
    VeloraConfig,
    convert_to_lora,
    get_eva_state_dict,
    initialize_lora_eva_weights,
    preprocess_loraga,
    save_as_lora,
)
from .tuners.lora.loftq import replace_lora_weights_loftq
from .tuners.miss import MissConfig, MissModel
from .tuners.multitask_prompt_tuning import MultitaskPromptTuningConfig, MultitaskPromptTuningInit
from .tuners.oft import OFTConfig, OFTModel
from .tuners.osf import OSFConfig, OSFModel
from .tuners.p_tuning import PromptEncoder, PromptEncoderConfig, PromptEncoderReparameterizationType
from .tuners.peanut import PeanutConfig, PeanutModel
from .tuners.poly import PolyConfig, PolyModel
from .tuners.prefix_tuning import PrefixEncoder, PrefixTuningConfig
from .tuners.prompt_tuning import PromptEmbedding, PromptTuningConfig, PromptTuningInit
from .tuners.psoft import PsoftConfig, PsoftModel
from .tuners.pvera import PveraConfig, PveraModel
from .tuners.randlora import RandLoraConfig, RandLoraModel
from .tuners.road import RoadConfig, RoadModel
from .tuners.shadow import ShadowConfig, ShadowModel
from .tuners.shira import ShiraConfig, ShiraModel
from .tuners.supertuning import SupertuningConfig, SupertuningModel
from .tuners.tinylora import TinyLoraConfig, TinyLoraModel
from .tuners.trainable_tokens import TrainableTokensConfig, TrainableTokensModel
from .tuners.unilora import UniLoraConfig, UniLoraModel
from .tuners.vblora import VBLoRAConfig, VBLoRAModel
from .tuners.vera import VeraConfig, VeraModel
from .tuners.waveft import WaveFTConfig, WaveFTModel
from .tuners.xlora import XLoraConfig, XLoraModel
from .utils import (
    TRANSFORMERS_MODELS_TO_PREFIX_TUNING_POSTPROCESS_MAPPING,
    NoMatchingPeftModuleError,
    PeftError,
    PeftType,
    PeftWarning,
    TaskType,
    bloom_model_postprocess_past_key_value,
    get_peft_model_state_dict,
    load_peft_weights,
    set_peft_model_state_dict,
    shift_tokens_right,
)
from .utils.quantization import cast_mixed_precision_params, prepare_model_for_kbit_training

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
    "get_eva_state_dict",
    "initialize_lora_eva_weights",
    "replace_lora_weights_loftq",
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
    "DeftConfig",
    "DeftModel",
    "C3AConfig",
    "C3AModel",
    "CPTConfig",
    "CPTEmbedding",
    "CartridgeConfig",
    "CartridgeEncoder",
    "TrainableTokensConfig",
    "TrainableTokensModel",
    "DeloraConfig",
    "DeloraModel",
    "FourierFTConfig",
    "FourierFTModel",
    "GraloraConfig",
    "GraloraModel",
    "FrodConfig",
    "FrodModel",
    "HiraConfig",
    "HiraModel",
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
    "MissConfig",
    "MissModel",
    "OFTConfig",
    "OFTModel",
    "ShiraConfig",
    "ShiraModel",
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
    "OSFConfig",
    "OSFModel",
    "PeanutConfig",
    "PeanutModel",
    "VeraConfig",
    "VeraModel",
    "WaveFTConfig",
    "WaveFTModel",
    "PolyConfig",
    "PolyModel",
    "XLoraConfig",
    "XLoraModel",
    "PEFT_TYPE_TO_CONFIG_MAPPING",
    "LoraConfig",
    "LoraModel",
    "LoraRuntimeConfig",
    "PeftConfig",
    "PeftConfigMixin",
    "PeftMixedModel",
    "PeftModel",
    "PeftModelForCausalLM",
    "PeftModelForFeatureExtraction",
    "PeftModelForQuestionAnswering",
    "PeftModelForSeq2SeqLM",
    "PeftModelForSequenceClassification",
    "PeftModelForTokenClassification",
    "PeftType",
    "PeftWarning",
    "MultitaskPromptTuningConfig",
    "MultitaskPromptTuningInit",
    "PrefixEncoder",
    "PrefixTuningConfig",
    "PromptEmbedding",
    "PromptEncoder",
    "PromptEncoderConfig",
    "PromptEncoderReparameterizationType",
    "PromptLearningConfig",
    "PromptTuningConfig",
    "PromptTuningInit",
    "PveraConfig",
    "PveraModel",
    "PsoftConfig",
    "PsoftModel",
    "TaskType",
    "__version__",
    "compose_cartridge_adapters",
    "get_layer_status",
    "get_model_status",
    "get_peft_config",
    "get_peft_model",
    "get_peft_model_state_dict",
    "initialize_kv_prefix_from_past_key_values",
    "initialize_kv_prefix_from_text",
    "inject_adapter_in_model",
    "load_peft_weights",
    "prompt_embeddings_from_past_key_values",
    "register_peft_method",
    "set_peft_model_state_dict",
    "AutoPeftModel",
    "AutoPeftModelForCausalLM",
    "AutoPeftModelForFeatureExtraction",
    "AutoPeftModelForQuestionAnswering",
    "AutoPeftModelForSeq2SeqLM",
    "AutoPeftModelForSequenceClassification",
    "AutoPeftModelForTokenClassification",
    "cast_mixed_precision_params",
    "prepare_model_for_kbit_training",
    "MODEL_TYPE_TO_PEFT_MODEL_MAPPING",
    "PEFT_TYPE_TO_MIXED_MODEL_MAPPING",
    "PEFT_TYPE_TO_TUNER_MAPPING",
    "TRANSFORMERS_MODELS_TO_PREFIX_TUNING_POSTPROCESS_MAPPING",
    "NoMatchingPeftModuleError",
    "PeftError",
    "bloom_model_postprocess_past_key_value",
    "convert_to_lora",
    "find_kappa_target_modules",
    "get_base_model_state_dict",
    "save_as_lora",
    "set_base_model_state_dict",
    "shift_tokens_right",
]
