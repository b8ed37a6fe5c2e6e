"""Adapter state dicts: from model keys to file keys and back.

A file key is the model key with the adapter name taken out (`...q_proj.lora_A.default.weight` ->
`...q_proj.lora_A.weight`, `...lora_magnitude_vector.default.weight` -> `...lora_magnitude_vector`,
`score.modules_to_save.default.weight` -> `score.weight`). Saving and loading use the same function
(`adapter_key_map`), so what is written is exactly what is read back.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from torch import nn

from .constants import EMBEDDING_LAYER_NAMES
from .warnings import AdapterLoadError, PeftWarning

_MODULES_TO_SAVE = "modules_to_save"


def _prefix_of(config) -> str:
    from ..mapping import PEFT_TYPE_TO_PREFIX_MAPPING

    return PEFT_TYPE_TO_PREFIX_MAPPING.get(config.peft_type, "")


def _file_key(model_key: str, adapter_name: str, prefix: str) -> str | None:
    """The file key of an adapter tensor of `adapter_name`, or None if the key is not one."""
    parts = model_key.split(".")
    for i in range(len(parts) - 1):
        if parts[i + 1] != adapter_name:
            continue
        if parts[i] == _MODULES_TO_SAVE:
            return ".".join(parts[:i] + parts[i + 2 :])
        if prefix and parts[i].startswith(prefix):
            rest = parts[i + 2 :]
            if parts[i].endswith("magnitude_vector") and rest == ["weight"]:
                rest = []
            return ".".join(parts[: i + 1] + rest)
    return None


def _embedding_layers_to_save(model: nn.Module, config, save_embedding_layers: str | bool) -> list[str]:
    if save_embedding_layers is True:
        return list(EMBEDDING_LAYER_NAMES)
    if save_embedding_layers != "auto":
        return []
    targets = getattr(config, "target_modules", None) or []
    if isinstance(targets, str):
        hits = [n for n in EMBEDDING_LAYER_NAMES if n in targets]
    else:
        hits = [n for n in EMBEDDING_LAYER_NAMES if any(t == n or t.endswith("." + n) for t in targets)]
    if hits:
        warnings.warn("Setting `save_embedding_layers` to `True` as embedding layers found in `target_modules`.")
        return list(EMBEDDING_LAYER_NAMES)
    if _vocab_was_resized(model, config):
        warnings.warn(
            "Setting `save_embedding_layers` to `True` as the embedding vocabulary size differs from the base "
            "model's config."
        )
        return list(EMBEDDING_LAYER_NAMES)
    return []


def _vocab_was_resized(model: nn.Module, config) -> bool:
    """True when the model's input embedding has another size than its base checkpoint's config says."""
    base_path = getattr(config, "base_model_name_or_path", None)
    get_emb = getattr(model, "get_input_embeddings", None)
    if not base_path or get_emb is None or not os.path.isfile(os.path.join(str(base_path), "config.json")):
        return False
    import json

    try:
        with open(os.path.join(str(base_path), "config.json"), encoding="utf-8") as f:
            base_vocab = json.load(f).get("vocab_size")
        emb = get_emb()
    except (OSError, ValueError, NotImplementedError):
        return False
    weight = getattr(emb, "weight", None)
    return base_vocab is not None and weight is not None and weight.shape[0] != base_vocab


def adapter_key_map(
    model: nn.Module,
    adapter_name: str,
    state_dict_keys: list[str] | None = None,
    save_embedding_layers: str | bool = False,
) -> dict[str, str]:
    """Map model state-dict keys of adapter `adapter_name` to their file keys."""
    config = model.peft_config[adapter_name]
    prefix = _prefix_of(config)
    keys = list(model.state_dict().keys()) if state_dict_keys is None else state_dict_keys
    mapping: dict[str, str] = {}
    for key in keys:
        file_key = _file_key(key, adapter_name, prefix)
        if file_key is not None:
            mapping[key] = file_key
    bias = getattr(config, "bias", "none")
    if bias == "all":
        mapping.update({k: k for k in keys if k.endswith("bias") and k not in mapping and not _belongs_to_other(k)})
    elif bias.endswith("_only"):
        adapted = {k.split("." + prefix)[0] for k in mapping if prefix and "." + prefix in k}
        for module in adapted:
            for candidate in (f"{module}.base_layer.bias", f"{module}.bias"):
                if candidate in keys:
                    mapping[candidate] = candidate
    for layer in _embedding_layers_to_save(model, config, save_embedding_layers):
        for key in keys:
            if key in mapping or _belongs_to_other(key):
                continue
            parts = key.split(".")
            if layer in parts and not any(p.startswith(prefix) for p in parts if prefix):
                mapping[key] = key.replace(f".{_MODULES_TO_SAVE}.{adapter_name}", "")
    return mapping


def _belongs_to_other(key: str) -> bool:
    """Keys of wrapper internals that never go into a file as they are (originals, other copies)."""
    return ".original_module." in key or f".{_MODULES_TO_SAVE}." in key


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
    if getattr(config, "is_prompt_learning", False):
        raise NotImplementedError("Prompt-learning adapters are not supported by peftkit yet.")
    mapping = adapter_key_map(model, adapter_name, list(state_dict.keys()), save_embedding_layers)
    return {file_key: state_dict[key] for key, file_key in mapping.items()}


def set_peft_model_state_dict(
    model: nn.Module,
    peft_model_state_dict: dict[str, torch.Tensor],
    adapter_name: str = "default",
    ignore_mismatched_sizes: bool = False,
    low_cpu_mem_usage: bool = False,
) -> Any:
    """Load adapter tensors (file keys) into adapter `adapter_name` of `model`.

    Returns torch's `_IncompatibleKeys(missing_keys, unexpected_keys)`; missing keys are the adapter's
    own tensors that the file did not provide. Shapes are checked before anything is copied, and a
    mismatch names the key, both shapes and the likely cause.
    """
    model_state = model.state_dict()
    mapping = adapter_key_map(model, adapter_name, list(model_state.keys()), save_embedding_layers=False)
    file_to_model = {file_key: key for key, file_key in mapping.items()}
    to_load: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[tuple[str, tuple, tuple]] = []
    for file_key, tensor in peft_model_state_dict.items():
        model_key = file_to_model.get(file_key)
        if model_key is None:
            wrapped = _wrapped_key(file_key, adapter_name, model_state)
            model_key = wrapped if wrapped is not None else (file_key if file_key in model_state else None)
        if model_key is None:
            unexpected.append(file_key)
            continue
        expected = model_state[model_key]
        if expected.device.type != "meta" and tuple(expected.shape) != tuple(tensor.shape):
            mismatched.append((file_key, tuple(expected.shape), tuple(tensor.shape)))
            continue
        to_load[model_key] = tensor
    if mismatched and not ignore_mismatched_sizes:
        lines = "\n".join(f"  {k}: the model expects {e}, the file holds {g}" for k, e, g in mismatched[:10])
        raise AdapterLoadError(
            f"Size mismatch while loading adapter '{adapter_name}':\n{lines}\n"
            "The adapter was most likely trained on a different base model (or one with resized embeddings), "
            "or with a different rank than its adapter_config.json says. Load it onto the base model it was "
            "made for, or pass ignore_mismatched_sizes=True to skip these tensors."
        )
    if mismatched:
        warnings.warn(f"Skipped {len(mismatched)} tensors with mismatched sizes: {[m[0] for m in mismatched]}.", PeftWarning)
    result = model.load_state_dict(to_load, strict=False, assign=low_cpu_mem_usage)
    missing = [k for k in mapping if k not in to_load and k in model_state and _file_key_is_adapter(mapping[k], k)]
    return torch.nn.modules.module._IncompatibleKeys(missing, unexpected + list(result.unexpected_keys))


def _file_key_is_adapter(file_key: str, model_key: str) -> bool:
    return file_key != model_key or f".{_MODULES_TO_SAVE}." in model_key


def _wrapped_key(file_key: str, adapter_name: str, model_state: dict[str, torch.Tensor]) -> str | None:
    """`x.weight` of a file may be a modules_to_save copy `x.modules_to_save.<adapter>.weight` in the model."""
    module, _, leaf = file_key.rpartition(".")
    candidate = f"{module}.{_MODULES_TO_SAVE}.{adapter_name}.{leaf}"
    return candidate if candidate in model_state else None


def load_peft_weights(model_id: str, device: str | None = None, **hf_hub_download_kwargs: Any) -> dict[str, torch.Tensor]:
    """Read an adapter's weights file (safetensors preferred; `.bin` only with weights_only=True)."""
    from .weights_io import read_adapter_weights

    return read_adapter_weights(model_id, device=device, **hf_hub_download_kwargs)
