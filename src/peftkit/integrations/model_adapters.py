"""Adapters on a transformers model without the PeftModel wrapper and without the `peft` alias.

transformers' own `PreTrainedModel.add_adapter/load_adapter/...` need a package importable as `peft`
(see `peftkit.compat`). These functions do the same on peftkit directly: the adapters live in the
model's layers (adapted in place), their configs in `model.peft_config`, and files are in PEFT's format
(`adapter_config.json` + `adapter_model.safetensors`, keys prefixed with `base_model.model.`).
`AdapterMixin` offers them as methods.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import nn

from .. import functional
from ..config import PeftConfig
from ..persistence.distributed import gather_sharded_adapter_state_dict
from ..persistence.folders import save_peft_model
from ..persistence.state_dict import get_peft_model_state_dict, set_peft_model_state_dict
from ..tuners.tuners_utils import BaseTunerLayer, set_adapter_trainable
from ..utils.modules_to_save import ModulesToSaveWrapper
from ..utils.other import get_submodules
from ..utils.weights_io import read_adapter_weights

__all__ = [
    "AdapterMixin",
    "active_adapters",
    "add_adapter",
    "delete_adapter",
    "disable_adapters",
    "enable_adapters",
    "get_adapter_state_dict",
    "has_adapters",
    "load_adapter",
    "save_adapters",
    "set_adapter",
]

PEFT_PREFIX = "base_model.model."  # what PEFT's files put before the model's own parameter names


def has_adapters(model: nn.Module) -> bool:
    """Whether `model` carries peftkit adapters in its layers (and their configs in `peft_config`)."""
    configs = getattr(model, "peft_config", None)
    return isinstance(configs, dict) and bool(configs) and any(_adapter_modules(model))


def _adapter_modules(model: nn.Module):
    return (m for m in model.modules() if isinstance(m, (BaseTunerLayer, ModulesToSaveWrapper)))


def _require_adapters(model: nn.Module) -> None:
    if not has_adapters(model):
        raise ValueError(
            f"{type(model).__name__} has no adapters: add one first with add_adapter(model, config) or "
            "load_adapter(model, path)."
        )


def add_adapter(model: nn.Module, adapter_config: PeftConfig, adapter_name: str = "default") -> None:
    """Add a new, trainable adapter to `model` in place and make it the active one."""
    if not isinstance(adapter_config, PeftConfig):
        raise TypeError(
            f"adapter_config should be a peftkit PeftConfig, got {type(adapter_config).__name__}."
        )
    if adapter_name in (getattr(model, "peft_config", None) or {}):
        raise ValueError(f"Adapter '{adapter_name}' already exists; delete it first or choose another name.")
    if adapter_config.base_model_name_or_path is None:
        adapter_config.base_model_name_or_path = getattr(model, "name_or_path", None) or None
    functional.inject_adapter_in_model(adapter_config, model, adapter_name)
    set_adapter(model, adapter_name)


def load_adapter(
    model: nn.Module,
    peft_model_id: str | os.PathLike,
    adapter_name: str = "default",
    is_trainable: bool = False,
    allow_missing_keys: bool = False,
    **hub_kwargs: Any,
) -> Any:
    """Load an adapter (folder or Hub id, PEFT format) into `model` as `adapter_name`.

    A new adapter is created (and becomes active); an existing one is refilled from the file. Returns
    the missing/unexpected keys. Frozen and the model in eval mode unless `is_trainable`. A failed load
    of a new adapter removes it again.
    """
    peft_model_id = os.fspath(peft_model_id)
    created = adapter_name not in (getattr(model, "peft_config", None) or {})
    weights = read_adapter_weights(peft_model_id, device=_device_of(model), **hub_kwargs)
    weights = {k.removeprefix(PEFT_PREFIX): v for k, v in weights.items()}
    if created:
        config_kwargs = {k: v for k, v in hub_kwargs.items() if k != "force_download"}
        config = PeftConfig.from_pretrained(peft_model_id, **config_kwargs)
        config.inference_mode = not is_trainable
        functional.inject_adapter_in_model(config, model, adapter_name)
    try:
        result = set_peft_model_state_dict(
            model, weights, adapter_name=adapter_name, missing_keys_are_errors=not allow_missing_keys
        )
    except BaseException:
        if created:
            with contextlib.suppress(Exception):
                _remove_new_adapter(model, adapter_name)
        raise
    set_adapter_trainable(model, adapter_name, is_trainable)
    if not is_trainable:
        model.eval()
    return result


def _remove_new_adapter(model: nn.Module, adapter_name: str) -> None:
    """Undo a failed load: delete the adapter and put back the original layers of those left empty."""
    delete_adapter(model, adapter_name)
    for key, module in reversed(list(model.named_modules())):  # innermost first
        if isinstance(module, BaseTunerLayer) and not module._get_available_adapters():
            parent, _, name = get_submodules(model, key)
            setattr(parent, name, module._unloaded_base_layer())
        elif isinstance(module, ModulesToSaveWrapper) and not module.modules_to_save:
            parent, _, name = get_submodules(model, key)
            setattr(parent, name, module.original_module)


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))


def set_adapter(model: nn.Module, adapter_name: str | list[str]) -> None:
    """Make `adapter_name` (or several) the active, trainable adapters."""
    _require_adapters(model)
    names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
    missing = [n for n in names if n not in model.peft_config]
    if missing:
        raise ValueError(f"Adapter(s) {missing} not found; available adapters: {sorted(model.peft_config)}.")
    functional.set_adapter(model, adapter_name)


def active_adapters(model: nn.Module) -> list[str]:
    """The names of the active adapters."""
    _require_adapters(model)
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    holding = [m for m in layers if m._get_available_adapters()] or layers
    if not holding:  # only modules_to_save wrappers
        holding = list(_adapter_modules(model))
    return list(holding[0].active_adapters)


def enable_adapters(model: nn.Module) -> None:
    """Turn the adapters back on."""
    _require_adapters(model)
    for module in _adapter_modules(model):
        module.enable_adapters(True)


def disable_adapters(model: nn.Module) -> None:
    """Turn every adapter off: the model computes the base model's outputs."""
    _require_adapters(model)
    for module in _adapter_modules(model):
        module.enable_adapters(False)


def delete_adapter(model: nn.Module, adapter_names: str | list[str]) -> None:
    """Delete one or several adapters (layers and configs); with the last one, `peft_config` goes too."""
    _require_adapters(model)
    names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
    missing = [n for n in names if n not in model.peft_config]
    if missing:
        raise ValueError(f"Adapter(s) {missing} do not exist; available: {sorted(model.peft_config)}.")
    for name in names:
        functional.delete_adapter(model, name, prefix="")
        del model.peft_config[name]
    if not model.peft_config:
        del model.peft_config


def get_adapter_state_dict(
    model: nn.Module, adapter_name: str | None = None, state_dict: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of `adapter_name` (default: the active adapter), keyed as transformers keys them (the
    model's names without the adapter name). `state_dict` may be a full state dict gathered by FSDP or
    DeepSpeed."""
    _require_adapters(model)
    adapter_name = adapter_name or active_adapters(model)[0]
    return get_peft_model_state_dict(model, state_dict=state_dict, adapter_name=adapter_name)


def save_adapters(
    model: nn.Module,
    save_directory: str | os.PathLike,
    selected_adapters: list[str] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    is_main_process: bool = True,
    safe_serialization: bool = True,
) -> None:
    """Save only the adapters, as `PeftModel.save_pretrained` does: "default" at the top of the folder,
    other adapters in sub-folders of their name; files PEFT and peftkit load (`PeftModel.from_pretrained`)
    and transformers loads with `from_pretrained`/`load_adapter`.

    `state_dict` may be the model's full state dict gathered by FSDP/DeepSpeed (keys without the
    `base_model.model.` prefix); only the adapter tensors are taken from it.
    """
    _require_adapters(model)
    if state_dict is None:  # under FSDP2 a collective: every rank gathers, the main process writes
        state_dict = gather_sharded_adapter_state_dict(model, selected_adapters)
    full = model.state_dict() if state_dict is None else state_dict
    save_peft_model(
        model,
        save_directory,
        safe_serialization=safe_serialization,
        selected_adapters=selected_adapters,
        is_main_process=is_main_process,
        state_dict={PEFT_PREFIX + key: value for key, value in full.items()},
    )


class AdapterMixin:
    """The functions of this module as methods, for a model class: `class MyModel(AdapterMixin, LlamaForCausalLM)`.

    Put it first among the bases: it replaces transformers' adapter methods (which need `peft`).
    """

    def add_adapter(self, adapter_config: PeftConfig, adapter_name: str | None = None) -> None:
        add_adapter(self, adapter_config, adapter_name or "default")

    def load_adapter(
        self, peft_model_id: str, adapter_name: str | None = None, is_trainable: bool = False, **kwargs: Any
    ) -> Any:
        return load_adapter(
            self, peft_model_id, adapter_name or "default", is_trainable=is_trainable, **kwargs
        )

    def set_adapter(self, adapter_name: str | list[str]) -> None:
        set_adapter(self, adapter_name)

    def enable_adapters(self) -> None:
        enable_adapters(self)

    def disable_adapters(self) -> None:
        disable_adapters(self)

    def active_adapters(self) -> list[str]:
        return active_adapters(self)

    def delete_adapter(self, adapter_names: str | list[str]) -> None:
        delete_adapter(self, adapter_names)

    def get_adapter_state_dict(
        self, adapter_name: str | None = None, state_dict: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        return get_adapter_state_dict(self, adapter_name, state_dict)

    def save_adapters(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        save_adapters(self, save_directory, **kwargs)
