"""The ground floor: types, constants, warnings, file and Hub I/O, modules_to_save; nothing here imports
from a higher floor. peft's `peft.utils` also offers the state-dict functions, which live on the
persistence floor: they are resolved on first use (see `lazy_exports`)."""

from .auxiliary_wrapper import AuxiliaryTrainingWrapper
from .constants import (
    CONFIG_NAME,
    INCLUDE_LINEAR_LAYERS_SHORTHAND,
    SAFETENSORS_WEIGHTS_NAME,
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
    WEIGHTS_NAME,
)
from .device import infer_device
from .lazy_exports import lazy_exports
from .modules_to_save import ModulesToSaveWrapper
from .other import get_submodules as _get_submodules
from .peft_types import PeftType, TaskType
from .warnings import NoMatchingPeftModuleError, PeftError, PeftWarning
from .weights_io import load_peft_weights

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "get_peft_model_state_dict": "peftkit.persistence.state_dict",
        "set_peft_model_state_dict": "peftkit.persistence.state_dict",
        "TrainableTokensWrapper": "peftkit.tuners.trainable_tokens.wrapper",
    },
)

__all__ = [
    "AuxiliaryTrainingWrapper",
    "CONFIG_NAME",
    "INCLUDE_LINEAR_LAYERS_SHORTHAND",
    "SAFETENSORS_WEIGHTS_NAME",
    "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING",
    "WEIGHTS_NAME",
    "ModulesToSaveWrapper",
    "NoMatchingPeftModuleError",
    "PeftError",
    "PeftType",
    "PeftWarning",
    "TaskType",
    "TrainableTokensWrapper",
    "_get_submodules",
    "get_peft_model_state_dict",
    "infer_device",
    "load_peft_weights",
    "set_peft_model_state_dict",
]
