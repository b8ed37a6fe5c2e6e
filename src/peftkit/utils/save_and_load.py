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


def _embedding_names_in_targets(config) -> list[str]:
    """Embedding layer names that `target_modules` names (PEFT's test: list membership, or a substring
    of a regex string)."""
    targets = getattr(config, "target_modules", None) or []
    return [n for n in EMBEDDING_LAYER_NAMES if n in targets]


def _embedding_layers_to_save(model: nn.Module, config, save_embedding_layers: str | bool) -> list[str]:
    """Which embedding layers' full weights go into the file, as PEFT decides it.

    The targeted embedding layers when `target_modules` names some, else all of `EMBEDDING_LAYER_NAMES`;
    with "auto", only when an embedding layer is targeted or the vocabulary was resized.
    """
    if save_embedding_layers is False:
        return []
    targeted = _embedding_names_in_targets(config)
    if save_embedding_layers is True:
        return targeted or list(EMBEDDING_LAYER_NAMES)
    if save_embedding_layers != "auto":
        raise ValueError(
            f"save_embedding_layers must be True, False or 'auto', got {save_embedding_layers!r}."
        )
    # trainable tokens target the embedding, but their trained rows are the adapter (peft adds no matrix)
    if targeted and getattr(config, "peft_type", None) != "TRAINABLE_TOKENS":
        warnings.warn(
            "Setting `save_embedding_layers` to `True` as embedding layers found in `target_modules`."
        )
        return targeted
    if _vocab_was_resized(model, config):
        warnings.warn(
            "Setting `save_embedding_layers` to `True` as the embedding vocabulary size differs from the base "
            "model's config."
        )
        return list(EMBEDDING_LAYER_NAMES)
    return []


def _base_config_file(base_path: str) -> str | None:
    """The base checkpoint's config.json: in its local folder, or already in the Hub cache (saving never
    goes to the network)."""
    local = os.path.join(base_path, "config.json")
    if os.path.isfile(local):
        return local
    if os.path.isdir(base_path) or base_path.count("/") > 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base_path, "config.json")
    except Exception:  # an invalid repo id: there is nothing to compare with
        return None
    return cached if isinstance(cached, str) else None


def _vocab_was_resized(model: nn.Module, config) -> bool:
    """True when the model's input embedding has another size than its base checkpoint's config says."""
    import json

    base_path = getattr(config, "base_model_name_or_path", None)
    get_emb = getattr(model, "get_input_embeddings", None)
    path = _base_config_file(str(base_path)) if base_path else None
    if path is None or get_emb is None:
        return False
    try:
        with open(path, encoding="utf-8") as f:
            base_config = json.load(f)
        emb = get_emb()
    except (OSError, ValueError, NotImplementedError):
        return False
    base_vocab = base_config.get("vocab_size") or (base_config.get("text_config") or {}).get("vocab_size")
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
    mapping.update(_tuner_level_keys(model, adapter_name, keys))
    bias = getattr(config, "bias", "none")
    if bias == "all":
        mapping.update(
            {k: k for k in keys if k.endswith("bias") and k not in mapping and not _belongs_to_other(k)}
        )
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


def _tuner_level_keys(model: nn.Module, adapter_name: str, keys: list[str]) -> dict[str, str]:
    """Keys of tensors held by the tuner itself rather than by a layer (VeRA's shared projections), as
    the tuner's `_tuner_state_keys` names them; `base_model.` in front when `model` is a PeftModel."""
    tuner = _tuner_of(model)
    if tuner is None:
        return {}
    path = "" if tuner is model else "base_model."
    present = set(keys)
    return {
        path + rel: path + file_rel
        for rel, file_rel in tuner._tuner_state_keys(adapter_name).items()
        if path + rel in present
    }


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
    if getattr(config, "is_prompt_learning", False) or getattr(config, "is_adaption_prompt", False):
        from ..prompt_learning.state_dict import get_prompt_learning_state_dict

        return get_prompt_learning_state_dict(model, state_dict, adapter_name, save_embedding_layers)
    mapping = adapter_key_map(model, adapter_name, list(state_dict.keys()), save_embedding_layers)
    tensors = {file_key: state_dict[key] for key, file_key in mapping.items()}
    tuner = _tuner_of(model)
    return tensors if tuner is None else tuner._adapter_tensors_to_save(tensors, adapter_name)


def _tuner_of(model: nn.Module):
    """The tuner (BaseTuner) of a PeftModel, or `model` itself when it is one; None otherwise."""
    from ..tuners.tuners_utils import BaseTuner

    for candidate in (model, model._modules.get("base_model")):
        if isinstance(candidate, BaseTuner):
            return candidate
    return None


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
        from ..prompt_learning.state_dict import set_prompt_learning_state_dict

        return set_prompt_learning_state_dict(
            model, peft_model_state_dict, adapter_name, ignore_mismatched_sizes, missing_keys_are_errors
        )
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
        warnings.warn(
            f"Skipped {len(mismatched)} tensors with mismatched sizes: {[m[0] for m in mismatched]}.",
            PeftWarning,
        )
    adapter_keys = [k for k in mapping if k in model_state and _file_key_is_adapter(mapping[k], k)]
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
    if adapter_keys and len(missing) == len(adapter_keys):
        raise AdapterLoadError(
            f"None of the {len(state_dict)} tensors given fit adapter '{adapter_name}': e.g. {sorted(state_dict)[:3]} "
            f"while the adapter expects keys like {[_strip(k, adapter_name) for k in adapter_keys[:2]]}. The "
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


def _strip(model_key: str, adapter_name: str) -> str:
    return model_key.replace(f".{adapter_name}.", ".")


def _file_key_is_adapter(file_key: str, model_key: str) -> bool:
    return file_key != model_key or f".{_MODULES_TO_SAVE}." in model_key


def _wrapped_key(file_key: str, adapter_name: str, model_state: dict[str, torch.Tensor]) -> str | None:
    """`x.weight` of a file may be a modules_to_save copy `x.modules_to_save.<adapter>.weight` in the model."""
    module, _, leaf = file_key.rpartition(".")
    candidate = f"{module}.{_MODULES_TO_SAVE}.{adapter_name}.{leaf}"
    return candidate if candidate in model_state else None


def load_peft_weights(
    model_id: str,
    device: str | None = None,
    key_mapping: dict[str, str] | None = None,
    **hf_hub_download_kwargs: Any,
) -> dict[str, torch.Tensor]:
    """Read an adapter's weights from a folder or Hub repo (safetensors preferred; `.bin` only with
    `torch.load(weights_only=True)`).

    Args:
        model_id: a local adapter folder or a Hub repo id.
        device: where the tensors go (CPU by default).
        key_mapping: regex `pattern -> replacement` renames applied to the keys without their
            `base_model.model.` prefix (first match wins), as in PEFT.
        hf_hub_download_kwargs: `subfolder`, `revision`, `cache_dir`, `token`, `local_files_only`,
            `force_download`.
    """
    from .hub import HUB_KWARGS
    from .weights_io import read_adapter_weights

    unknown = sorted(set(hf_hub_download_kwargs) - set(HUB_KWARGS))
    if unknown:
        raise TypeError(
            f"load_peft_weights() got unexpected keyword arguments {unknown}; it accepts {list(HUB_KWARGS)}."
        )
    return read_adapter_weights(model_id, device=device, key_mapping=key_mapping, **hf_hub_download_kwargs)
