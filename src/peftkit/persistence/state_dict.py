"""Adapter state dicts: the tensors of one adapter as files hold them (`get_peft_model_state_dict`), and
loading such tensors into a model (`set_peft_model_state_dict`), with the checks that keep a load from
being silently wrong. The key rule is `tuners._adapter_keys`; prompt-learning adapters have their own
layout (`prompt_state_dict`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..tuners._adapter_keys import (
    adapter_key_map,
    file_key_is_adapter,
    saved_other_param_tensors,
    strip_adapter_name,
    take_saved_other_param_tensors,
    tuner_level_keys,
    tuner_of,
    wrapped_key,
)
from ..utils.warnings import AdapterLoadError, PeftWarning
from .prompt_state_dict import get_prompt_learning_state_dict, set_prompt_learning_state_dict

__all__ = ["get_peft_model_state_dict", "set_peft_model_state_dict"]


def get_peft_model_state_dict(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor] | None = None,
    adapter_name: str = "default",
    unwrap_compiled: bool = False,
    save_embedding_layers: str | bool = "auto",
) -> dict[str, torch.Tensor]:
    """The tensors of adapter `adapter_name`, keyed as they are saved (adapter name removed).

    `state_dict` may be a full state dict handed in by FSDP/DeepSpeed; it is filtered the same way.
    """
    if unwrap_compiled:
        model = getattr(model, "_orig_mod", model)
    if state_dict is None:
        state_dict = model.state_dict()
    config = model.peft_config[adapter_name]
    if getattr(config, "is_prompt_learning", False) or getattr(config, "is_adaption_prompt", False):
        return get_prompt_learning_state_dict(model, state_dict, adapter_name, save_embedding_layers)
    mapping = adapter_key_map(model, adapter_name, list(state_dict.keys()), save_embedding_layers)
    tensors = {file_key: state_dict[key] for key, file_key in mapping.items()}
    tensors.update(saved_other_param_tensors(model, adapter_name))
    tuner = tuner_of(model)
    return tensors if tuner is None else tuner._adapter_tensors_to_save(tensors, adapter_name)


def set_peft_model_state_dict(
    model: nn.Module,
    peft_model_state_dict: dict[str, torch.Tensor],
    adapter_name: str = "default",
    ignore_mismatched_sizes: bool = False,
    low_cpu_mem_usage: bool = False,
    *,
    missing_keys_are_errors: bool = False,
) -> Any:
    """Load adapter tensors (file keys) into adapter `adapter_name` of `model`.

    Returns torch's `_IncompatibleKeys(missing_keys, unexpected_keys)`; missing keys are the adapter's
    own tensors that the file did not provide (a warning names them, or an error with
    `missing_keys_are_errors`). Shapes are checked before anything is copied, and a mismatch names the
    key, both shapes and the likely cause.
    """
    config = getattr(model, "peft_config", {}).get(adapter_name)
    if getattr(config, "is_prompt_learning", False) or getattr(config, "is_adaption_prompt", False):
        return set_prompt_learning_state_dict(
            model, peft_model_state_dict, adapter_name, ignore_mismatched_sizes, missing_keys_are_errors
        )
    peft_model_state_dict = take_saved_other_param_tensors(model, adapter_name, peft_model_state_dict)
    tuner = tuner_of(model)
    if tuner is not None and adapter_name in tuner.peft_config:
        peft_model_state_dict = tuner._adapter_tensors_from_file(dict(peft_model_state_dict), adapter_name)
    model_state = model.state_dict()
    mapping = adapter_key_map(model, adapter_name, list(model_state.keys()), save_embedding_layers=False)
    file_to_model = {file_key: key for key, file_key in mapping.items()}
    to_load: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[tuple[str, tuple, tuple]] = []
    wrong_kind: list[str] = []
    for file_key, tensor in peft_model_state_dict.items():
        model_key = file_to_model.get(file_key)
        if model_key is None:
            wrapped = wrapped_key(file_key, adapter_name, model_state)
            model_key = wrapped if wrapped is not None else (file_key if file_key in model_state else None)
        if model_key is None:
            unexpected.append(file_key)
            continue
        expected = model_state[model_key]
        if expected.device.type != "meta" and tuple(expected.shape) != tuple(tensor.shape):
            mismatched.append((file_key, tuple(expected.shape), tuple(tensor.shape)))
            continue
        if _kind(expected) != _kind(tensor):
            wrong_kind.append(f"{file_key}: the model holds {expected.dtype}, the file {tensor.dtype}")
            continue
        to_load[model_key] = tensor
    if wrong_kind:
        # copying would convert integers to floats (or truncate floats) silently: not the adapter that was saved
        raise AdapterLoadError(
            f"Adapter '{adapter_name}': tensors of the wrong kind of dtype in the file: {wrong_kind[:10]}. The file "
            "is corrupt or was not written for this adapter."
        )
    if mismatched and not ignore_mismatched_sizes:
        lines = "\n".join(f"  {k}: the model expects {e}, the file holds {g}" for k, e, g in mismatched[:10])
        raise AdapterLoadError(
            f"Size mismatch while loading adapter '{adapter_name}':\n{lines}\n"
            "The adapter was most likely trained on a different base model (or one with resized embeddings), "
            "or with a different rank than its adapter_config.json says. Load it onto the base model it was "
            "made for, or pass ignore_mismatched_sizes=True to skip these tensors."
        )
    if mismatched:
        warnings.warn(
            f"Skipped {len(mismatched)} tensors with mismatched sizes: {[m[0] for m in mismatched]}.",
            PeftWarning,
        )
    # tensors the tuner itself holds for the adapter count even when their file key is the model key
    tuner_keys = tuner_level_keys(model, adapter_name, list(model_state))
    adapter_keys = [
        k for k in mapping if k in model_state and (file_key_is_adapter(mapping[k], k) or k in tuner_keys)
    ]
    missing = [k for k in adapter_keys if k not in to_load]
    _check_coverage(
        adapter_name,
        adapter_keys,
        missing,
        unexpected,
        peft_model_state_dict,
        low_cpu_mem_usage or missing_keys_are_errors,
    )
    result = model.load_state_dict(to_load, strict=False, assign=low_cpu_mem_usage)
    return torch.nn.modules.module._IncompatibleKeys(missing, unexpected + list(result.unexpected_keys))


def _kind(tensor: torch.Tensor) -> str:
    if tensor.is_complex():
        return "complex"
    if tensor.is_floating_point():
        return "float"
    return "bool" if tensor.dtype == torch.bool else "integer"


def _check_coverage(
    adapter_name: str,
    adapter_keys: list[str],
    missing: list[str],
    unexpected: list[str],
    state_dict: dict[str, torch.Tensor],
    missing_is_error: bool,
) -> None:
    """Never load silently wrong: no adapter tensor filled is an error; some left unfilled is an error
    when `missing_is_error` (always with low_cpu_mem_usage: they would have no data), else a loud warning.
    """
    if adapter_keys and not state_dict and missing_is_error:
        raise AdapterLoadError(
            f"The file holds no tensors at all, but adapter '{adapter_name}' has {len(adapter_keys)} (e.g. "
            f"{[strip_adapter_name(k, adapter_name) for k in adapter_keys[:2]]}): it was saved empty (peft 0.21.2 saves "
            "X-LoRA adapters without their classifier) or is not this adapter's file. Pass allow_missing_keys=True "
            "to load anyway, keeping their initial values (PEFT's behaviour)."
        )
    if adapter_keys and len(missing) == len(adapter_keys) and state_dict:
        raise AdapterLoadError(
            f"None of the {len(state_dict)} tensors given fit adapter '{adapter_name}': e.g. {sorted(state_dict)[:3]} "
            f"while the adapter expects keys like {[strip_adapter_name(k, adapter_name) for k in adapter_keys[:2]]}. The "
            "adapter was made for another model (other module names), or the keys lack the "
            "'base_model.model.' prefix or still contain the adapter name."
        )
    if missing and missing_is_error:
        raise AdapterLoadError(
            f"The file has no values for {len(missing)} of the {len(adapter_keys)} tensors of adapter "
            f"'{adapter_name}': {missing[:10]}{' ...' if len(missing) > 10 else ''}. The file is incomplete or "
            "was saved with another config. Pass allow_missing_keys=True (and low_cpu_mem_usage=False) to load "
            "anyway, keeping their initial values (PEFT's behaviour)."
        )
    if missing:
        warnings.warn(
            f"Loading adapter '{adapter_name}' left {len(missing)} of its {len(adapter_keys)} tensors unfilled "
            f"(they keep their initial values): {missing[:10]}{' ...' if len(missing) > 10 else ''}",
            PeftWarning,
            stacklevel=3,
        )
    if unexpected:
        warnings.warn(
            f"{len(unexpected)} tensors do not belong to adapter '{adapter_name}' or the model and were ignored: "
            f"{unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}",
            PeftWarning,
            stacklevel=3,
        )
