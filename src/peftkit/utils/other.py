"""Small helpers shared across the package."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

# PEFT's paths for what integrations and user code import from `peft.utils.other` (see peftkit.compat)
from .auxiliary_wrapper import AuxiliaryTrainingWrapper
from .device import infer_device
from .fsdp import fsdp_auto_wrap_policy
from .lazy_exports import lazy_exports
from .modules_to_save import ModulesToSaveWrapper

# The trainable-tokens wrapper belongs to its method, a floor above this one.
__getattr__, __dir__ = lazy_exports(
    globals(), {"TrainableTokensWrapper": "peftkit.tuners.trainable_tokens.wrapper"}
)

__all__ = [
    "AuxiliaryTrainingWrapper",
    "ModulesToSaveWrapper",
    "TrainableTokensWrapper",  # noqa: F822  (resolved by __getattr__)
    "fsdp_auto_wrap_policy",
    "get_pattern_key",
    "get_quantization_config",
    "get_submodules",
    "id_tensor_storage",
    "infer_device",
    "shift_tokens_right",
    "transpose",
]


def get_submodules(model: nn.Module, key: str) -> tuple[nn.Module, nn.Module, str]:
    """Return (parent, module, attribute name) for the dotted module name `key`.

    The root (`key=""`) is its own parent, with the empty name, as in PEFT: callers that walk
    `named_modules()` meet it first.
    """
    parent_name, _, target_name = key.rpartition(".")
    return model.get_submodule(parent_name), model.get_submodule(key), target_name


def get_pattern_key(pattern_keys: Iterable[str], key: str) -> str:
    """The first of `pattern_keys` (a `rank_pattern`/`alpha_pattern`-style dict's keys, regexes) that
    matches the end of module name `key` at a name boundary; `key` itself when none does."""
    for pattern in pattern_keys:
        if re.match(rf"(.*\.)?({pattern})$", key):
            return pattern
    return key


def transpose(weight: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    """`weight.T` when `fan_in_fan_out` (a Conv1D-style (in, out) weight), else `weight` (a Parameter
    stays a Parameter)."""
    if not fan_in_fan_out:
        return weight
    if isinstance(weight, nn.Parameter):
        return nn.Parameter(weight.T)
    return weight.T


def shift_tokens_right(
    input_ids: torch.Tensor, pad_token_id: int, decoder_start_token_id: int
) -> torch.Tensor:
    """Decoder inputs from labels: shifted one position right, `decoder_start_token_id` first, and the
    loss-ignore label -100 replaced by `pad_token_id`."""
    if pad_token_id is None:
        raise ValueError("self.model.config.pad_token_id has to be defined.")
    shifted = input_ids.new_zeros(input_ids.shape)
    shifted[:, 1:] = input_ids[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill_(shifted == -100, pad_token_id)


def _get_batch_size(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> int:
    """The batch size of a call that passes `input_ids` or `inputs_embeds`."""
    if input_ids is not None:
        return input_ids.shape[0]
    if inputs_embeds is not None:
        return inputs_embeds.shape[0]
    raise ValueError("You have to provide either input_ids or inputs_embeds")


def _is_valid_match(key: str, target_key: str) -> bool:
    """Whether module name `key` is `target_key` or ends with it as whole dotted parts."""
    return key == target_key or key.endswith("." + target_key)


def _get_input_embeddings_name(model: nn.Module, default: str | None = None) -> str | None:
    """The module name of `model.get_input_embeddings()`, or `default` when there is none to find."""
    if not hasattr(model, "get_input_embeddings"):
        return default
    embeddings = model.get_input_embeddings()
    return next((name for name, module in model.named_modules() if module is embeddings), default)


def _freeze_adapter(model: nn.Module, adapter_name: str) -> None:
    """Freeze every parameter whose name contains `adapter_name` (peft's name-based helper)."""
    for name, param in model.named_parameters():
        if adapter_name in name:
            param.requires_grad = False


def id_tensor_storage(tensor: torch.Tensor) -> tuple[torch.device, int, int]:
    """(device, storage address, storage size in bytes): equal for tensors that share memory."""
    storage = tensor.untyped_storage()
    return tensor.device, storage.data_ptr(), storage.nbytes()


def get_quantization_config(model: nn.Module, method: str) -> Any:
    """The model's `config.quantization_config` when it was quantized with `method` (e.g. "gptq"), else
    None."""
    if getattr(model, "quantization_method", None) != method:
        return None
    return getattr(getattr(model, "config", None), "quantization_config", None)
