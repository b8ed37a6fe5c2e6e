"""Saving PeftModels to folders and loading them back (local folders and Hub repos).

Layout (PEFT's): the "default" adapter's `adapter_config.json` and `adapter_model.safetensors` at the
top of the folder, every other adapter in a sub-folder named after it.

A save never leaves a folder that loads as a valid but wrong adapter. Per adapter: the new weights are
written completely to a temporary file and read back; only then is the old config removed, the weights
renamed into place and the new config written (atomically). A save interrupted before the rename leaves
the old adapter intact; one interrupted after it leaves a folder without `adapter_config.json`, which
refuses to load with a clear error. Never old config + new weights, or new config + old weights.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..config import PeftConfig
from ..tuners.lora.conversion import convert_to_lora
from ..tuners.tuners_utils import BaseTunerLayer, set_adapter_trainable
from ..utils.atomic_io import atomic_write_text, staged_file
from ..utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from ..utils.hub import hub_api, split_hub_kwargs
from ..utils.warnings import AdapterLoadError, PeftWarning
from ..utils.weights_io import (
    prepare_for_saving,
    read_adapter_weights,
    weights_file_name,
    write_weights_file,
    written_shapes,
)
from .prompt_loading import check_trainable_load, fill_prompt_adapter, uses_prompt_loading
from .state_dict import get_peft_model_state_dict, set_peft_model_state_dict

# kwargs PeftConfig.from_pretrained understands (force_download only matters for weight files)
_CONFIG_HUB_KWARGS = ("subfolder", "revision", "cache_dir", "token", "local_files_only")


def _adapter_folder(save_directory: str, adapter_name: str) -> str:
    folder = save_directory if adapter_name == "default" else os.path.join(save_directory, adapter_name)
    root = os.path.realpath(save_directory)
    if os.path.commonpath([root, os.path.realpath(folder)]) != root:
        raise ValueError(
            f"Adapter name {adapter_name!r} would write outside the save folder {save_directory!r}."
        )
    return folder


def _base_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _base_model_name(model: nn.Module) -> str | None:
    base = _base_model(model)
    name = getattr(base, "name_or_path", None)
    if not name and getattr(base, "config", None) is not None:
        name = getattr(base.config, "_name_or_path", None)
    return name or None


def _config_to_save(model: nn.Module, adapter_name: str) -> PeftConfig:
    """The config as PEFT writes it: inference mode, the base model's name, and `auto_mapping` (the
    base class) when no task type says which class to load."""
    config = copy.deepcopy(model.peft_config[adapter_name])
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = _base_model_name(model)
    config.inference_mode = True
    if config.task_type is None and getattr(config, "auto_mapping", None) is None:
        base_cls = type(_base_model(model))
        config.auto_mapping = {"base_model_class": base_cls.__name__, "parent_library": base_cls.__module__}
    tuner = getattr(model, "base_model", None)
    if callable(getattr(tuner, "_adapter_config_to_save", None)):  # a method's last word (AdaLoRA's ranks)
        config = tuner._adapter_config_to_save(config, adapter_name)
    return config


def _check_written(path: str, expected: dict[str, torch.Tensor], safe: bool) -> None:
    """Read back what was written and compare keys and shapes with what the adapter holds."""
    try:
        written = written_shapes(path, safe)
    except Exception as err:
        raise OSError(f"The adapter weights just written to {path} cannot be read back: {err}") from err
    wanted = {k: tuple(v.shape) for k, v in expected.items()}
    if written != wanted:
        diff = sorted(set(written) ^ set(wanted)) or [k for k in wanted if wanted[k] != written.get(k)]
        raise OSError(f"The adapter file {path} does not hold what was saved (differing keys: {diff[:10]}).")


def _save_adapter(
    folder: str,
    tensors: dict[str, torch.Tensor],
    config: PeftConfig,
    safe_serialization: bool,
    metadata: dict,
) -> None:
    """Write one adapter's (prepared) weights and config into `folder` in the crash-safe order."""
    prepared = tensors
    path = os.path.join(folder, weights_file_name(safe_serialization))
    with staged_file(path) as staged:
        write_weights_file(staged.tmp, prepared, safe_serialization=safe_serialization, metadata=metadata)
        _check_written(staged.tmp, prepared, safe_serialization)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, CONFIG_NAME))  # from here on, the folder refuses to load
        staged.commit()
    stale = os.path.join(folder, WEIGHTS_NAME if safe_serialization else SAFETENSORS_WEIGHTS_NAME)
    with contextlib.suppress(FileNotFoundError):
        os.remove(stale)  # a stale file of the other format could be loaded instead of this one
    config.save_pretrained(folder)


def write_adapter_folder(
    folder: str | os.PathLike, tensors: dict[str, torch.Tensor], config: PeftConfig
) -> None:
    """Write an adapter folder from its file-format tensors (keys as PEFT saves them) and its config.

    The same crash-safe order as `save_pretrained`: the weights are staged, read back and checked, and the
    config is written last, so an interrupted write leaves a folder that refuses to load.
    """
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    _save_adapter(folder, prepare_for_saving(tensors), config, True, {"peftkit_version": __version__})


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
    save_directory = os.fspath(save_directory)
    if os.path.isfile(save_directory):
        raise ValueError(f"Provided path ({save_directory}) should be a directory, not a file")
    names = list(model.peft_config) if selected_adapters is None else list(selected_adapters)
    unknown = [n for n in names if n not in model.peft_config]
    if unknown:
        raise ValueError(
            "You passed an invalid `selected_adapters` arguments, current supported adapter names are "
            f"{list(model.peft_config)} - got {unknown}."
        )
    if path_initial_model_for_weight_conversion is not None and len(names) != 1:
        raise ValueError(
            "path_initial_model_for_weight_conversion holds the initial state of one adapter, but this save writes "
            f"{names}: pass selected_adapters=[<the PiSSA/OLoRA/CorDA adapter>]."
        )
    if not is_main_process:
        return
    full_state_dict = kwargs.pop("state_dict", None)
    os.makedirs(save_directory, exist_ok=True)

    # gather and check everything first: a failure here leaves the folder untouched
    plans = []
    for adapter_name in names:
        folder = _adapter_folder(save_directory, adapter_name)
        tensors = get_peft_model_state_dict(
            model,
            state_dict=full_state_dict,
            adapter_name=adapter_name,
            save_embedding_layers=save_embedding_layers,
        )
        if not tensors:
            raise ValueError(f"Adapter '{adapter_name}' has no tensors to save; nothing was written.")
        config = _config_to_save(model, adapter_name)
        if path_initial_model_for_weight_conversion is not None:  # PiSSA/OLoRA/CorDA -> plain LoRA, rank 2r
            tensors, config = convert_to_lora(
                tensors, config, os.fspath(path_initial_model_for_weight_conversion)
            )
        plans.append((folder, prepare_for_saving(tensors), config))
    for folder, tensors, config in plans:
        os.makedirs(folder, exist_ok=True)
        _save_adapter(folder, tensors, config, safe_serialization, {"peftkit_version": __version__})
    write_model_card(model, save_directory)


def write_model_card(model: nn.Module, output_dir: str) -> None:
    """Write a model card README.md (library, base model, tags) unless the folder already has one."""
    path = os.path.join(output_dir, "README.md")
    if os.path.exists(path):
        return
    config = next(iter(model.peft_config.values()))
    base = config.base_model_name_or_path or _base_model_name(model) or ""
    method = getattr(config.peft_type, "value", str(config.peft_type)).lower()
    task = getattr(config.task_type, "value", None)
    pipeline = {"CAUSAL_LM": "text-generation", "SEQ_2_SEQ_LM": "text2text-generation"}.get(task or "")
    # As PEFT: the base model and the transformers tags only for a transformers model (one with a config);
    # a custom torch module has no model id to point at.
    is_transformers = getattr(_base_model(model), "config", None) is not None
    # JSON strings are valid YAML scalars: paths and ids with ':' or quotes stay intact
    lines = (
        ["---"] + ([f"base_model: {json.dumps(base)}"] if is_transformers else []) + ["library_name: peft"]
    )
    if pipeline:
        lines.append(f"pipeline_tag: {pipeline}")
    lines.append("tags:")
    if is_transformers:
        lines.append(f"- {json.dumps('base_model:adapter:' + base)}")
    lines += [f"- {method}", "- peftkit"] + (["- transformers"] if is_transformers else [])
    lines += ["---", "", f"# {method.upper()} adapter" + (f" for {base}" if base else ""), ""]
    lines += ["Saved with peftkit in the PEFT adapter format: it loads with `peftkit` and with `peft`.", ""]
    atomic_write_text(path, "\n".join(lines))


def _warn_unused(kwargs: dict[str, Any], where: str) -> None:
    """Name keyword arguments nothing here uses (a typo, or a PEFT option peftkit does not implement,
    such as accelerate's `device_map`/`offload_folder` dispatch) instead of dropping them silently."""
    if kwargs:
        warnings.warn(f"{where} ignored keyword arguments {sorted(kwargs)}.", PeftWarning, stacklevel=4)


def _default_device(model: nn.Module) -> torch.device:
    """Load adapter tensors straight onto the base model's device (its first real parameter's)."""
    for param in model.parameters():
        if param.device.type != "meta":
            return param.device
    return torch.device("cpu")


def load_peft_model(
    cls: type | Callable[[PeftConfig], type],
    model: nn.Module,
    model_id: str | os.PathLike,
    adapter_name: str = "default",
    is_trainable: bool = False,
    config: PeftConfig | None = None,
    autocast_adapter_dtype: bool = True,
    ephemeral_gpu_offload: bool = False,
    low_cpu_mem_usage: bool = False,
    key_mapping: dict[str, str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Implementation of `PeftModel.from_pretrained` (see there). `cls` is the model class, or a function
    that picks it from the loaded config (PeftModel picks its task class by `task_type`).

    The weights file is read before the model is touched, and a load that fails after the adapter
    layers were injected takes them out again, so a failed call leaves `model` as it was.
    """
    model_id = os.fspath(model_id)
    hub_kwargs = split_hub_kwargs(kwargs)
    torch_device = kwargs.pop("torch_device", None)
    allow_missing_keys = kwargs.pop("allow_missing_keys", False)
    allow_bin = kwargs.pop("allow_bin", True)
    _warn_unused(kwargs, "PeftModel.from_pretrained")
    if config is None:
        config = PeftConfig.from_pretrained(
            model_id, **{k: v for k, v in hub_kwargs.items() if k in _CONFIG_HUB_KWARGS}
        )
    elif not isinstance(config, PeftConfig):
        raise ValueError(f"The input config must be a PeftConfig, got {type(config).__name__}.")
    weights = read_adapter_weights(
        model_id,
        device=torch_device or _default_device(model),
        allow_bin=allow_bin,
        key_mapping=key_mapping,
        **hub_kwargs,
    )
    if hasattr(config, "runtime_config"):
        config.runtime_config.ephemeral_gpu_offload = ephemeral_gpu_offload
    _warn_if_other_base(config, model, model_id)

    check_trainable_load(config, is_trainable)
    config.inference_mode = not is_trainable
    if not isinstance(cls, type):
        cls = cls(config)
    peft_model = cls(
        model,
        config,
        adapter_name,
        autocast_adapter_dtype=autocast_adapter_dtype,
        low_cpu_mem_usage=low_cpu_mem_usage,
    )
    try:
        _fill_adapter(
            peft_model,
            weights,
            model_id,
            adapter_name,
            is_trainable,
            autocast_adapter_dtype,
            low_cpu_mem_usage,
            allow_missing_keys,
        )
    except BaseException:
        with contextlib.suppress(Exception):
            peft_model.base_model.unload()  # give the caller's model back without adapter layers
        raise
    return peft_model


def _warn_if_other_base(config: PeftConfig, model: nn.Module, model_id: str) -> None:
    """Say so when the adapter records a base model whose name differs from the model's (peft is silent).

    Only the last path component is compared, so a local copy of the same checkpoint does not warn.
    """
    recorded, actual = config.base_model_name_or_path, _base_model_name(model)
    if not recorded or not actual:
        return

    def last(name: str) -> str:
        return os.path.basename(os.path.normpath(str(name))).lower()

    if last(recorded) != last(actual):
        warnings.warn(
            f"Adapter '{model_id}' was trained on base model '{recorded}', but it is being loaded onto "
            f"'{actual}'. If the outputs look wrong, load the base model the adapter was made for.",
            PeftWarning,
            stacklevel=4,
        )


def load_adapter_into(
    model: nn.Module,
    model_id: str | os.PathLike,
    adapter_name: str,
    is_trainable: bool = False,
    torch_device: str | None = None,
    autocast_adapter_dtype: bool = True,
    low_cpu_mem_usage: bool = False,
    key_mapping: dict[str, str] | None = None,
    allow_missing_keys: bool = False,
    **kwargs: Any,
) -> Any:
    """Implementation of `PeftModel.load_adapter`: create the adapter if needed, then fill it from the file.

    Returns `set_peft_model_state_dict`'s missing/unexpected keys. Adapter tensors missing from the file
    are an error unless `allow_missing_keys=True` (then a warning names them, as PEFT does). A failed load
    removes the adapter it had just created.
    """
    model_id = os.fspath(model_id)
    hub_kwargs = split_hub_kwargs(kwargs)
    kwargs.pop("ephemeral_gpu_offload", None)
    allow_bin = kwargs.pop("allow_bin", True)
    _warn_unused(kwargs, "PeftModel.load_adapter")
    created = adapter_name not in model.peft_config
    if created:
        config = PeftConfig.from_pretrained(
            model_id, **{k: v for k, v in hub_kwargs.items() if k in _CONFIG_HUB_KWARGS}
        )
    weights = read_adapter_weights(
        model_id,
        device=torch_device or _default_device(model),
        allow_bin=allow_bin,
        key_mapping=key_mapping,
        **hub_kwargs,
    )
    if created:
        config.inference_mode = not is_trainable
        model.add_adapter(
            adapter_name,
            config,
            low_cpu_mem_usage=low_cpu_mem_usage,
            autocast_adapter_dtype=autocast_adapter_dtype,
        )
    try:
        return _fill_adapter(
            model,
            weights,
            model_id,
            adapter_name,
            is_trainable,
            autocast_adapter_dtype,
            low_cpu_mem_usage,
            allow_missing_keys,
        )
    except BaseException:
        if created:
            with contextlib.suppress(Exception):
                model.delete_adapter(adapter_name)
        raise


def _fill_adapter(
    model: nn.Module,
    weights: dict[str, torch.Tensor],
    model_id: str,
    adapter_name: str,
    is_trainable: bool,
    autocast_adapter_dtype: bool,
    low_cpu_mem_usage: bool,
    allow_missing_keys: bool = False,
) -> Any:
    """Copy `weights` into adapter `adapter_name`, then settle device, dtype and trainability."""
    if uses_prompt_loading(model.peft_config[adapter_name]):
        return fill_prompt_adapter(model, weights, model_id, adapter_name, is_trainable, allow_missing_keys)
    try:
        result = set_peft_model_state_dict(
            model,
            weights,
            adapter_name=adapter_name,
            low_cpu_mem_usage=low_cpu_mem_usage,
            missing_keys_are_errors=not allow_missing_keys,
        )
    except AdapterLoadError as err:
        raise AdapterLoadError(f"Loading '{model_id}': {err}") from err
    tuner = model.base_model
    if low_cpu_mem_usage:
        _place_beside_base(tuner, adapter_name)
    if autocast_adapter_dtype:
        tuner._cast_adapter_dtype(adapter_name)
    # as PEFT: the loaded adapter is trainable or frozen as asked, whether active or not; others keep theirs
    set_adapter_trainable(model, adapter_name, is_trainable)
    if not is_trainable:
        model.eval()
    return result


def _place_beside_base(tuner: nn.Module, adapter_name: str) -> None:
    """Assigned tensors (low_cpu_mem_usage) keep the file's device and dtype: move them to the base layer's,
    as freshly created adapter tensors would be."""
    for module in tuner.model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        weight = getattr(module.get_base_layer(), "weight", None)
        if weight is None or weight.is_meta:
            continue
        dtype = weight.dtype if weight.dtype.is_floating_point else None
        for tensor in module._adapter_tensors(adapter_name):
            target_dtype = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
            if tensor.device != weight.device or tensor.dtype != target_dtype:
                tensor.data = tensor.data.to(weight.device, dtype=target_dtype)


def push_peft_model_to_hub(
    model: nn.Module,
    repo_id: str,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "50GB",
    tags: list[str] | None = None,
    **save_kwargs: Any,
) -> Any:
    """Save the adapters to a temporary folder, then upload it with `HfApi.upload_folder`.

    Returns the commit URL (as a string, like PEFT's `push_to_hub`).
    """
    api = hub_api(token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, token=token)
    repo_id = getattr(repo_url, "repo_id", None) or repo_id
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, **save_kwargs)
        if tags:
            _add_card_tags(os.path.join(folder, "README.md"), tags)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message or "Upload model",
            commit_description=commit_description,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )
    return str(getattr(info, "commit_url", info))


def _add_card_tags(path: str, tags: list[str]) -> None:
    """Append `tags` to the model card's tag list (the card was just written by save_pretrained)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    extra = "".join(f"- {json.dumps(t)}\n" for t in tags)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace("tags:\n", "tags:\n" + extra, 1))
