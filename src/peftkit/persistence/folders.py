"""Loading adapters from folders and Hub repos into models, and pushing saved adapters to the Hub.

Saving is in `saving` (re-exported here). A load reads the config and the weights of one save
(`reading`), builds the adapter layers, fills them, and settles device, dtype and trainability; a load
that fails takes out what it had added, and its error names the file at fault.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..config import PeftConfig
from ..tuners._registry import PEFT_TYPE_TO_TUNER_MAPPING
from ..tuners.tuners_utils import BaseTuner, BaseTunerLayer, set_adapter_trainable
from ..utils.hub import hub_api, split_hub_kwargs
from ..utils.warnings import PeftWarning
from .prompt_loading import check_trainable_load, fill_prompt_adapter, uses_prompt_loading
from .reading import building_from, read_adapter_files
from .saving import base_model_name, save_peft_model, write_adapter_folder, write_model_card
from .state_dict import set_peft_model_state_dict

__all__ = [
    "load_adapter_into",
    "load_peft_model",
    "push_peft_model_to_hub",
    "save_peft_model",
    "write_adapter_folder",
    "write_model_card",
]


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
    if config is not None and not isinstance(config, PeftConfig):
        raise ValueError(f"The input config must be a PeftConfig, got {type(config).__name__}.")
    files = read_adapter_files(
        model_id,
        with_config=config is None,
        hub_kwargs=hub_kwargs,
        device=torch_device or _default_device(model),
        allow_bin=allow_bin,
        key_mapping=key_mapping,
    )
    config = config if config is not None else files.config
    config._prepare_for_loading(model_id, kwargs, hub_kwargs)  # a method's own from_pretrained options
    _warn_unused(kwargs, "PeftModel.from_pretrained")
    config = _config_for_weights(config, files.weights)
    if hasattr(config, "runtime_config"):
        config.runtime_config.ephemeral_gpu_offload = ephemeral_gpu_offload
    _warn_if_other_base(config, model, model_id)

    check_trainable_load(config, is_trainable)
    config.inference_mode = not is_trainable
    if not isinstance(cls, type):
        cls = cls(config)
    with building_from(files.config_path, model, files.weights):
        peft_model = cls(
            model,
            config,
            adapter_name,
            autocast_adapter_dtype=autocast_adapter_dtype,
            low_cpu_mem_usage=low_cpu_mem_usage,
        )
    try:
        with building_from(files.weights_path, model, files.weights):
            _fill_adapter(
                peft_model,
                files.weights,
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
    recorded, actual = config.base_model_name_or_path, base_model_name(model)
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
    files = read_adapter_files(
        model_id,
        with_config=created,
        hub_kwargs=hub_kwargs,
        device=torch_device or _default_device(model),
        allow_bin=allow_bin,
        key_mapping=key_mapping,
    )
    tuner = model._modules.get("base_model")
    if isinstance(tuner, BaseTuner):  # new weights under a merged adapter's name: take the old ones out first
        tuner._undo_merges(f"loading adapter '{adapter_name}'")
    if created:
        config = _config_for_weights(files.config, files.weights)
        config.inference_mode = not is_trainable
        with building_from(files.config_path, model, files.weights):
            model.add_adapter(
                adapter_name,
                config,
                low_cpu_mem_usage=low_cpu_mem_usage,
                autocast_adapter_dtype=autocast_adapter_dtype,
            )
    try:
        with building_from(files.weights_path, model, files.weights):
            return _fill_adapter(
                model,
                files.weights,
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
    adapter_name: str,
    is_trainable: bool,
    autocast_adapter_dtype: bool,
    low_cpu_mem_usage: bool,
    allow_missing_keys: bool = False,
) -> Any:
    """Copy `weights` into adapter `adapter_name`, then settle device, dtype and trainability."""
    if uses_prompt_loading(model.peft_config[adapter_name]):
        return fill_prompt_adapter(model, weights, adapter_name, is_trainable, allow_missing_keys)
    result = set_peft_model_state_dict(
        model,
        weights,
        adapter_name=adapter_name,
        low_cpu_mem_usage=low_cpu_mem_usage,
        missing_keys_are_errors=not allow_missing_keys,
    )
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


def _config_for_weights(config: PeftConfig, weights: dict[str, torch.Tensor]) -> PeftConfig:
    """`config` as the method's tuner adjusts it to the tensors of its file (`BaseTuner._config_for_weights`)."""
    tuner_cls = PEFT_TYPE_TO_TUNER_MAPPING.get(config.peft_type)
    if tuner_cls is None or not issubclass(tuner_cls, BaseTuner):
        return config
    return tuner_cls._config_for_weights(config, weights)
