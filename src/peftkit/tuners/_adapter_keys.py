"""Adapter tensor names: from model state-dict keys to the keys files hold, and back.

A file key is the model key with the adapter name taken out (`...q_proj.lora_A.default.weight` ->
`...q_proj.lora_A.weight`, `...lora_magnitude_vector.default.weight` -> `...lora_magnitude_vector`,
`score.modules_to_save.default.weight` -> `score.weight`). Saving, loading and hot-swapping use the same
function (`adapter_key_map`), so what is written is exactly what is read back. The rule is the
framework's (a method only contributes its parameter prefix, `_tuner_state_keys` and its layers'
`saved_other_param_names`, and its tuner's `shared_state_names`).
"""

from __future__ import annotations

import json
import os
import warnings

import torch
from torch import nn

from ..mapping import PEFT_TYPE_TO_PREFIX_MAPPING
from ..utils.constants import EMBEDDING_LAYER_NAMES
from ..utils.hub import cached_hub_file
from .tuners_utils import BaseTuner, BaseTunerLayer

_MODULES_TO_SAVE = "modules_to_save"


def _prefix_of(config) -> str:
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
        return cached_hub_file(base_path, "config.json")
    except Exception:  # an invalid repo id: there is nothing to compare with
        return None


def _vocab_was_resized(model: nn.Module, config) -> bool:
    """True when the model's input embedding has another size than its base checkpoint's config says."""
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
    tuner_keys = tuner_level_keys(model, adapter_name, keys)
    mapping.update(tuner_keys)
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
    # Last, since they still told `bias="*_only"` which modules are adapted: the layers' references to the
    # containers the tuner holds (`shared_state_names`) are dropped; the tuner's own keys save them once.
    shared = _shared_references(model)
    if shared:
        mapping = {k: v for k, v in mapping.items() if k in tuner_keys or not any(m in k for m in shared)}
    return mapping


def tuner_level_keys(model: nn.Module, adapter_name: str, keys: list[str]) -> dict[str, str]:
    """Keys of tensors held by the tuner itself rather than by a layer (VeRA's shared projections), as
    the tuner's `_tuner_state_keys` names them; `base_model.` in front when `model` is a PeftModel."""
    tuner = tuner_of(model)
    if tuner is None:
        return {}
    path = "" if tuner is model else "base_model."
    present = set(keys)
    return {
        path + rel: path + file_rel
        for rel, file_rel in tuner._tuner_state_keys(adapter_name).items()
        if path + rel in present
    }


def _shared_references(model: nn.Module) -> tuple[str, ...]:
    """`.<name>.` markers of the containers the tuner shares with its layers (`shared_state_names`)."""
    tuner = tuner_of(model)
    return () if tuner is None else tuple(f".{name}." for name in tuner.shared_state_names)


def _belongs_to_other(key: str) -> bool:
    """Keys of wrapper internals that never go into a file as they are (originals, other copies)."""
    return ".original_module." in key or f".{_MODULES_TO_SAVE}." in key


def tuner_of(model: nn.Module) -> BaseTuner | None:
    """The tuner (BaseTuner) of a PeftModel, or `model` itself when it is one; None otherwise."""
    for candidate in (model, model._modules.get("base_model")):
        if isinstance(candidate, BaseTuner):
            return candidate
    return None


def strip_adapter_name(model_key: str, adapter_name: str) -> str:
    return model_key.replace(f".{adapter_name}.", ".")


def file_key_is_adapter(file_key: str, model_key: str) -> bool:
    return file_key != model_key or f".{_MODULES_TO_SAVE}." in model_key


def wrapped_key(file_key: str, adapter_name: str, model_state: dict[str, torch.Tensor]) -> str | None:
    """`x.weight` of a file may be a modules_to_save copy `x.modules_to_save.<adapter>.weight` in the model."""
    module, _, leaf = file_key.rpartition(".")
    candidate = f"{module}.{_MODULES_TO_SAVE}.{adapter_name}.{leaf}"
    return candidate if candidate in model_state else None


def _layers_with_saved_other_params(model: nn.Module):
    """(module name, layer) for every adapter layer of `model` that declares `saved_other_param_names`."""
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer) and module.saved_other_param_names:
            yield name, module


def saved_other_param_tensors(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """The tensors of `adapter_name` that layers keep outside the state dict but files hold (their
    `saved_other_param_names`), keyed `<layer>.<name>` as `model.named_modules()` names the layer."""
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in _layers_with_saved_other_params(model):
        for attr in layer.saved_other_param_names:
            values = getattr(layer, attr)
            if adapter_name in values:
                tensors[f"{name}.{attr}"] = values[adapter_name]
    return tensors


def take_saved_other_param_tensors(
    model: nn.Module, adapter_name: str, tensors: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Give the layers of `model` their `saved_other_param_names` tensors of `adapter_name` from `tensors`
    (file keys; placed beside each layer's base weight), and return the tensors left for the state dict."""
    remaining = dict(tensors)
    for name, layer in _layers_with_saved_other_params(model):
        reference = layer._placement_reference()
        device = None if reference is None or reference.is_meta else reference.device
        for attr in layer.saved_other_param_names:
            tensor = remaining.pop(f"{name}.{attr}", None)
            if tensor is not None:
                getattr(layer, attr)[adapter_name] = tensor if device is None else tensor.to(device)
    return remaining
