"""Utilities shared by every method: types, constants, state dicts, modules_to_save."""

from .constants import (
    CONFIG_NAME,
    INCLUDE_LINEAR_LAYERS_SHORTHAND,
    SAFETENSORS_WEIGHTS_NAME,
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
    WEIGHTS_NAME,
)
from .modules_to_save import ModulesToSaveWrapper
from .other import get_submodules as _get_submodules
from .peft_types import PeftType, TaskType
from .save_and_load import get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict
from .warnings import NoMatchingPeftModuleError, PeftError, PeftWarning

__all__ = [
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
    "_get_submodules",
    "get_peft_model_state_dict",
    "load_peft_weights",
    "set_peft_model_state_dict",
]
