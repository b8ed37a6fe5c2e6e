"""The adapter methods. Importing this package registers each of them."""

from .fourierft import FourierFTConfig, FourierFTModel
from .hra import HRAConfig, HRAModel
from .ia3 import IA3Config, IA3Model
from .ln_tuning import LNTuningConfig, LNTuningModel
from .loha import LoHaConfig, LoHaModel
from .lokr import LoKrConfig, LoKrModel
from .lora import LoraConfig, LoraModel, LoraRuntimeConfig
from .oft import OFTConfig, OFTModel
from .vera import VeraConfig, VeraModel

__all__ = [
    "FourierFTConfig",
    "FourierFTModel",
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
    "VeraConfig",
    "VeraModel",
]
