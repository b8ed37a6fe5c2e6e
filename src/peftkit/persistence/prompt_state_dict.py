"""Adapter state dicts of prompt-learning (and adaption-prompt) adapters, in PEFT's file format.

File keys: `prompt_embeddings` (the computed virtual tokens: the prompt, P-tuning's encoder output, or
prefix tuning's flat prefix), `prefix_task_cols` / `prefix_task_rows` (multitask prompt tuning), and
the modules_to_save copies under their original names (`base_model.score.weight`). Adaption prompts are
saved under their module paths (`base_model.model.model.layers.N.self_attn.adaption_prompt`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..prompt_learning.prompts import get_prompt_embedding_to_save
from ..tuners._adapter_keys import adapter_key_map
from ..utils.peft_types import PeftType
from ..utils.warnings import AdapterLoadError, PeftWarning

PROMPT_KEY = "prompt_embeddings"
_MULTITASK_KEYS = ("prefix_task_cols", "prefix_task_rows")


def _other_key_map(
    model: nn.Module, adapter_name: str, keys: list[str], save_embedding_layers: Any
) -> dict[str, str]:
    """modules_to_save copies (and embedding layers when asked): model key -> file key."""
    return {
        k: v
        for k, v in adapter_key_map(model, adapter_name, keys, save_embedding_layers).items()
        if not k.startswith("prompt_encoder.")
    }


def get_prompt_learning_state_dict(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor] | None,
    adapter_name: str,
    save_embedding_layers: Any,
) -> dict[str, torch.Tensor]:
    """The tensors saved for prompt-learning (or adaption-prompt) adapter `adapter_name`, by file key."""
    config = model.peft_config[adapter_name]
    if config.is_adaption_prompt:
        return model.base_model.adapter_state_dict(adapter_name, prefix="base_model.")
    if state_dict is None:
        state_dict = model.state_dict()
    mapping = _other_key_map(model, adapter_name, list(state_dict), save_embedding_layers)
    result = {file_key: state_dict[key] for key, file_key in mapping.items()}
    result[PROMPT_KEY] = get_prompt_embedding_to_save(model, adapter_name)
    if config.peft_type == PeftType.MULTITASK_PROMPT_TUNING:
        for name in _MULTITASK_KEYS:
            result[name] = state_dict[f"prompt_encoder.{adapter_name}.{name}"]
    return result


def _loads_own_prompt(encoder: nn.Module) -> bool:
    """Encoders that store `prompt_embeddings` in several tensors (a Cartridge's frozen and trained tokens)
    load the file's tensor through their `load_prompt_embeddings`, as PEFT lets them."""
    return callable(getattr(encoder, "load_prompt_embeddings", None))


def _prompt_targets(model: nn.Module, adapter_name: str) -> dict[str, tuple[str, torch.Tensor]]:
    """file key -> (model key, tensor) of the prompt encoder's saved tensors (the model key of a
    `prompt_embeddings` that the encoder loads itself is the encoder's name)."""
    encoder = model.prompt_encoder[adapter_name]
    base = f"prompt_encoder.{adapter_name}."
    if _loads_own_prompt(encoder):
        return {PROMPT_KEY: (base.rstrip("."), encoder.embedding.weight)}
    targets = {PROMPT_KEY: (base + "embedding.weight", encoder.embedding.weight)}
    if model.peft_config[adapter_name].peft_type == PeftType.MULTITASK_PROMPT_TUNING:
        targets.update({name: (base + name, getattr(encoder, name)) for name in _MULTITASK_KEYS})
    return targets


def _mismatch_error(adapter_name: str, mismatched: list[tuple[str, tuple, tuple]]) -> AdapterLoadError:
    lines = "\n".join(f"  {k}: the model expects {e}, the file holds {g}" for k, e, g in mismatched[:10])
    return AdapterLoadError(
        f"Size mismatch while loading prompt-learning adapter '{adapter_name}':\n{lines}\n"
        "The adapter was made for a model of another size or with another num_virtual_tokens, or (prefix tuning "
        "with prefix_projection, P-tuning) the model was built for training while the file holds the computed "
        "virtual tokens: load it for inference (is_trainable=False / inference_mode=True)."
    )


def set_prompt_learning_state_dict(
    model: nn.Module,
    peft_model_state_dict: dict[str, torch.Tensor],
    adapter_name: str = "default",
    ignore_mismatched_sizes: bool = False,
    missing_keys_are_errors: bool = False,
) -> Any:
    """Load file tensors into prompt-learning (or adaption-prompt) adapter `adapter_name`; returns
    torch's `_IncompatibleKeys(missing_keys, unexpected_keys)`."""
    config = model.peft_config[adapter_name]
    if config.is_adaption_prompt:
        return model.base_model.load_adapter_state_dict(
            adapter_name,
            peft_model_state_dict,
            prefix="base_model.",
            missing_keys_are_errors=missing_keys_are_errors,
        )
    model_state = model.state_dict()
    targets = {
        fk: (mk, model_state.get(mk, tensor))
        for fk, (mk, tensor) in _prompt_targets(model, adapter_name).items()
    }
    for model_key, file_key in _other_key_map(model, adapter_name, list(model_state), False).items():
        targets[file_key] = (model_key, model_state[model_key])
    to_load: dict[str, torch.Tensor] = {}
    unexpected, mismatched = [], []
    for file_key, tensor in peft_model_state_dict.items():
        if file_key not in targets:
            unexpected.append(file_key)
            continue
        model_key, expected = targets[file_key]
        if tuple(expected.shape) != tuple(tensor.shape):
            mismatched.append((file_key, tuple(expected.shape), tuple(tensor.shape)))
            continue
        to_load[model_key] = tensor
    if mismatched and not ignore_mismatched_sizes:
        raise _mismatch_error(adapter_name, mismatched)
    missing = [mk for mk, _ in targets.values() if mk not in to_load]
    _check(adapter_name, targets, to_load, missing, unexpected, missing_keys_are_errors)
    if PROMPT_KEY in peft_model_state_dict and _has_reparameterization(model.prompt_encoder[adapter_name]):
        warnings.warn(
            f"Adapter '{adapter_name}' computes its virtual tokens with an encoder (P-tuning / prefix projection), "
            "but the file's `prompt_embeddings` are that encoder's output: they were loaded as the encoder's input, "
            "so outputs will differ from the saved adapter's. Load it for inference (inference_mode=True).",
            PeftWarning,
            stacklevel=3,
        )
    encoder = model.prompt_encoder[adapter_name]
    own_prompt = to_load.pop(targets[PROMPT_KEY][0], None) if _loads_own_prompt(encoder) else None
    if own_prompt is not None:
        encoder.load_prompt_embeddings(own_prompt)
    result = model.load_state_dict(to_load, strict=False)
    return torch.nn.modules.module._IncompatibleKeys(missing, unexpected + list(result.unexpected_keys))


def _has_reparameterization(encoder: nn.Module) -> bool:
    return hasattr(encoder, "mlp_head") or getattr(encoder, "prefix_projection", False)


def _check(adapter_name, targets, to_load, missing, unexpected, missing_is_error) -> None:
    if not to_load:
        raise AdapterLoadError(
            f"None of the tensors given fit prompt-learning adapter '{adapter_name}' (got {sorted(unexpected)[:5]}; "
            f"expected {sorted(targets)[:5]}). Is this a prompt-learning adapter of the same method?"
        )
    if missing and missing_is_error:
        raise AdapterLoadError(
            f"The file has no values for {missing} of adapter '{adapter_name}'; the file is incomplete or was saved "
            "with another config. Pass allow_missing_keys=True to keep their initial values."
        )
    if missing:
        warnings.warn(f"Loading adapter '{adapter_name}' left {missing} unfilled.", PeftWarning, stacklevel=4)
    if unexpected:
        warnings.warn(
            f"{len(unexpected)} tensors do not belong to adapter '{adapter_name}' and were ignored: {unexpected[:10]}",
            PeftWarning,
            stacklevel=4,
        )
