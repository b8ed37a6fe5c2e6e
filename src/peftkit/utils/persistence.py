"""Saving PeftModels to folders and loading them back (local folders and Hub repos).

Layout (PEFT's): the "default" adapter's `adapter_config.json` and `adapter_model.safetensors` at the
top of the folder, every other adapter in a sub-folder named after it.

A save never leaves a folder that loads as a valid but wrong adapter: the old config is removed first,
the weights are written atomically and checked, and the new config is written last (atomically). A save
interrupted at any point leaves either the old adapter, or a folder without `adapter_config.json`,
which refuses to load with a clear error.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import warnings
from typing import Any

import torch
from torch import nn

from ..config import PeftConfig
from .constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from .save_and_load import get_peft_model_state_dict, set_peft_model_state_dict
from .warnings import AdapterLoadError, PeftWarning
from .weights_io import read_adapter_weights, write_adapter_weights

_HUB_KWARGS = ("subfolder", "revision", "cache_dir", "token", "local_files_only")


def _adapter_folder(save_directory: str, adapter_name: str) -> str:
    folder = save_directory if adapter_name == "default" else os.path.join(save_directory, adapter_name)
    root = os.path.realpath(save_directory)
    if os.path.commonpath([root, os.path.realpath(folder)]) != root:
        raise ValueError(f"Adapter name {adapter_name!r} would write outside the save folder {save_directory!r}.")
    return folder


def _base_model_name(model: nn.Module) -> str | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = getattr(base, "name_or_path", None)
    if not name and getattr(base, "config", None) is not None:
        name = getattr(base.config, "_name_or_path", None)
    return name or None


def _verify_written(path: str, expected: dict[str, torch.Tensor], safe: bool) -> None:
    """Read back what was written and compare keys and shapes with what the adapter holds."""
    if safe:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            written = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    else:
        written = {k: tuple(v.shape) for k, v in torch.load(path, weights_only=True, map_location="meta").items()}
    wanted = {k: tuple(v.shape) for k, v in expected.items()}
    if written != wanted:
        diff = sorted(set(written) ^ set(wanted)) or [k for k in wanted if wanted[k] != written.get(k)]
        raise OSError(f"The adapter file {path} does not hold what was saved (differing keys: {diff[:10]}).")


def save_peft_model(
    model: nn.Module,
    save_directory: str | os.PathLike,
    safe_serialization: bool = True,
    selected_adapters: list[str] | None = None,
    save_embedding_layers: str | bool = "auto",
    is_main_process: bool = True,
    path_initial_model_for_weight_conversion: str | None = None,
    **kwargs: Any,
) -> None:
    """Implementation of `PeftModel.save_pretrained` (see there)."""
    from .. import __version__

    save_directory = os.fspath(save_directory)
    if os.path.isfile(save_directory):
        raise ValueError(f"Provided path ({save_directory}) should be a directory, not a file")
    names = list(model.peft_config) if selected_adapters is None else list(selected_adapters)
    unknown = [n for n in names if n not in model.peft_config]
    if unknown:
        raise ValueError(f"You passed an invalid `selected_adapters` arguments, current supported adapter names are "
                         f"{list(model.peft_config)} - got {unknown}.")
    if path_initial_model_for_weight_conversion is not None:
        raise NotImplementedError(
            "path_initial_model_for_weight_conversion (PiSSA/OLoRA/CorDA conversion) is not implemented in peftkit yet."
        )
    if not is_main_process:
        return
    full_state_dict = kwargs.pop("state_dict", None)
    os.makedirs(save_directory, exist_ok=True)
    for adapter_name in names:
        config = model.peft_config[adapter_name]
        folder = _adapter_folder(save_directory, adapter_name)
        os.makedirs(folder, exist_ok=True)
        tensors = get_peft_model_state_dict(
            model, state_dict=full_state_dict, adapter_name=adapter_name, save_embedding_layers=save_embedding_layers
        )
        if not tensors:
            raise ValueError(f"Adapter '{adapter_name}' has no tensors to save; nothing was written for it.")
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, CONFIG_NAME))  # invalidate first: see the module docstring
        path = write_adapter_weights(
            folder, tensors, safe_serialization=safe_serialization, metadata={"peftkit_version": __version__}
        )
        _verify_written(path, tensors, safe_serialization)
        stale = os.path.join(folder, WEIGHTS_NAME if safe_serialization else SAFETENSORS_WEIGHTS_NAME)
        with contextlib.suppress(FileNotFoundError):
            os.remove(stale)  # a stale file of the other format would be loaded instead of this one
        saved_config = copy.deepcopy(config)
        if saved_config.base_model_name_or_path is None:
            saved_config.base_model_name_or_path = _base_model_name(model)
        saved_config.inference_mode = True
        saved_config.save_pretrained(folder, **kwargs.get("config_overrides", {}))
    write_model_card(model, save_directory)


def write_model_card(model: nn.Module, output_dir: str) -> None:
    """Write a model card README.md (library, base model, tags) unless the folder already has one."""
    from ..utils.atomic_io import atomic_write_text

    path = os.path.join(output_dir, "README.md")
    if os.path.exists(path):
        return
    config = next(iter(model.peft_config.values()))
    base = config.base_model_name_or_path or _base_model_name(model) or ""
    method = getattr(config.peft_type, "value", str(config.peft_type)).lower()
    task = getattr(config.task_type, "value", None)
    pipeline = {"CAUSAL_LM": "text-generation", "SEQ_2_SEQ_LM": "text2text-generation"}.get(task or "")
    lines = ["---", f"base_model: {base!r}" if base else "base_model: ''", "library_name: peft"]
    if pipeline:
        lines.append(f"pipeline_tag: {pipeline}")
    lines += ["tags:", f"- 'base_model:adapter:{base}'", f"- {method}", "- peftkit", "- transformers", "---", ""]
    lines += [
        f"# {method.upper()} adapter" + (f" for {base}" if base else ""),
        "",
        "Saved with peftkit in the PEFT adapter format: it loads with `peftkit` and with `peft`.",
        "",
    ]
    atomic_write_text(path, "\n".join(lines))


def _split_hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}


def load_peft_model(
    cls: type,
    model: nn.Module,
    model_id: str | os.PathLike,
    adapter_name: str = "default",
    is_trainable: bool = False,
    config: PeftConfig | None = None,
    autocast_adapter_dtype: bool = True,
    ephemeral_gpu_offload: bool = False,
    low_cpu_mem_usage: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Implementation of `PeftModel.from_pretrained` (see there)."""
    from ..peft_model import MODEL_TYPE_TO_PEFT_MODEL_MAPPING, PeftModel

    model_id = os.fspath(model_id)
    hub_kwargs = _split_hub_kwargs(kwargs)
    if config is None:
        config = PeftConfig.from_pretrained(model_id, **hub_kwargs)
    elif not isinstance(config, PeftConfig):
        raise ValueError(f"The input config must be a PeftConfig, got {type(config).__name__}.")
    if hasattr(config, "runtime_config"):
        config.runtime_config.ephemeral_gpu_offload = ephemeral_gpu_offload
    config.inference_mode = not is_trainable
    if cls is PeftModel and config.task_type in MODEL_TYPE_TO_PEFT_MODEL_MAPPING:
        cls = MODEL_TYPE_TO_PEFT_MODEL_MAPPING[config.task_type]
    peft_model = cls(
        model,
        config,
        adapter_name,
        autocast_adapter_dtype=autocast_adapter_dtype,
        low_cpu_mem_usage=low_cpu_mem_usage,
    )
    load_adapter_into(
        peft_model,
        model_id,
        adapter_name,
        is_trainable=is_trainable,
        autocast_adapter_dtype=autocast_adapter_dtype,
        low_cpu_mem_usage=low_cpu_mem_usage,
        **hub_kwargs,
        **kwargs,
    )
    return peft_model


def load_adapter_into(
    model: nn.Module,
    model_id: str | os.PathLike,
    adapter_name: str,
    is_trainable: bool = False,
    torch_device: str | None = None,
    autocast_adapter_dtype: bool = True,
    low_cpu_mem_usage: bool = False,
    allow_missing_keys: bool = False,
    allow_bin: bool = True,
    ignore_mismatched_sizes: bool = False,
    **kwargs: Any,
) -> Any:
    """Implementation of `PeftModel.load_adapter`: create the adapter if needed, then fill it from the file.

    A load that fills no adapter tensor raises; missing adapter tensors raise unless
    `allow_missing_keys=True` (then they are named in a warning, PEFT's behaviour).
    """
    model_id = os.fspath(model_id)
    hub_kwargs = _split_hub_kwargs(kwargs)
    if adapter_name not in model.peft_config:
        config = PeftConfig.from_pretrained(model_id, **hub_kwargs)
        config.inference_mode = not is_trainable
        model.add_adapter(
            adapter_name, config, low_cpu_mem_usage=low_cpu_mem_usage, autocast_adapter_dtype=autocast_adapter_dtype
        )
    weights = read_adapter_weights(model_id, device=torch_device, allow_bin=allow_bin, **hub_kwargs)
    result = set_peft_model_state_dict(
        model,
        weights,
        adapter_name=adapter_name,
        ignore_mismatched_sizes=ignore_mismatched_sizes,
        low_cpu_mem_usage=low_cpu_mem_usage,
    )
    adapter_keys = list(result.missing_keys)
    loaded_any = len(weights) > len(result.unexpected_keys)
    if not loaded_any:
        raise AdapterLoadError(
            f"No adapter weights of '{model_id}' matched the model: the file's keys (e.g. "
            f"{sorted(weights)[:3]}) do not fit adapter '{adapter_name}'. Is this adapter for another base model?"
        )
    if adapter_keys:
        message = (
            f"Loading adapter '{adapter_name}' from '{model_id}' left {len(adapter_keys)} adapter tensors "
            f"unfilled (e.g. {adapter_keys[:5]}); they keep their initial values."
        )
        if not allow_missing_keys:
            raise AdapterLoadError(message + " Pass allow_missing_keys=True to accept this (PEFT only warns).")
        warnings.warn(message, PeftWarning)
    if result.unexpected_keys:
        warnings.warn(
            f"Found unexpected keys in the adapter file of '{model_id}', they were ignored: {result.unexpected_keys[:10]}",
            PeftWarning,
        )
    tuner = model.base_model
    if autocast_adapter_dtype:
        tuner._cast_adapter_dtype(adapter_name)
    tuner.set_adapter(tuner.active_adapters)
    if not is_trainable:
        freeze_adapter(model, adapter_name)
        model.eval()
    return result


def freeze_adapter(model: nn.Module, adapter_name: str) -> None:
    """Make every tensor of `adapter_name` (adapter layers and modules_to_save copies) non-trainable."""
    from ..tuners.tuners_utils import BaseTunerLayer
    from .modules_to_save import ModulesToSaveWrapper

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            for tensor in module._adapter_tensors(adapter_name):
                tensor.requires_grad_(False)
        elif isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
            module.modules_to_save[adapter_name].requires_grad_(False)


def push_peft_model_to_hub(
    model: nn.Module,
    repo_id: str,
    commit_message: str = "Upload adapter with peftkit",
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    **save_kwargs: Any,
) -> Any:
    """Save the adapters to a temporary folder, then upload it with `HfApi.upload_folder`."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, **save_kwargs)
        return api.upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message=commit_message, revision=revision, create_pr=create_pr
        )
