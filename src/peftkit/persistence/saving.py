"""Saving PeftModels to folders (`PeftModel.save_pretrained`).

Layout (PEFT's): the "default" adapter's `adapter_config.json` and `adapter_model.safetensors` at the
top of the folder, every other adapter in a sub-folder named after it, and a model card `README.md`.

A save replaces the folder as a whole (`utils.folder_swap`): everything is written into a staging
folder beside it, the rest of the old folder (other adapters' sub-folders, the user's own files) is
linked in, and one atomic exchange of paths makes the new tree the folder. At every instant, and after a
crash or SIGKILL at any point, the folder loads as the previous complete save or the new complete
one, sub-folders included. Concurrent saves into one folder take turns; the last one wins.

Where the folder cannot be swapped (see `replace_folder`), each adapter is written in place in a
crash-safe order instead: the new weights are written completely to a temporary file and read back;
only then is the old config removed, the weights renamed into place and the new config written
(atomically). An interruption then leaves the old adapter, or a folder without `adapter_config.json`
that refuses to load with a clear error: never old config + new weights, or new config + old weights.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..config import PeftConfig
from ..tuners._adapter_keys import tuner_of
from ..tuners.lora.initial_conversion import convert_initialized_to_plain_lora
from ..tuners.tuners_utils import BaseTunerLayer
from ..utils.atomic_io import atomic_write_text, staged_file
from ..utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from ..utils.folder_swap import replace_folder
from ..utils.weights_io import prepare_for_saving, weights_file_name, write_weights_file, written_shapes
from .state_dict import get_peft_model_state_dict

MODEL_CARD_NAME = "README.md"


def _adapter_subfolder(save_directory: str, adapter_name: str) -> str:
    """The adapter's folder relative to the save folder ("" for "default"), checked to stay inside it."""
    relative = "" if adapter_name == "default" else adapter_name
    root = os.path.realpath(save_directory)
    if os.path.commonpath([root, os.path.realpath(os.path.join(root, relative))]) != root:
        raise ValueError(
            f"Adapter name {adapter_name!r} would write outside the save folder {save_directory!r}."
        )
    return relative


def base_model_of(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def base_model_name(model: nn.Module) -> str | None:
    """The base model's Hub id or path as transformers recorded it (None for a custom model)."""
    base = base_model_of(model)
    name = getattr(base, "name_or_path", None)
    if not name and getattr(base, "config", None) is not None:
        name = getattr(base.config, "_name_or_path", None)
    return name or None


def _config_to_save(model: nn.Module, adapter_name: str) -> PeftConfig:
    """The config as PEFT writes it: inference mode, the base model's name, and `auto_mapping` (the
    base class) when no task type says which class to load."""
    config = copy.deepcopy(model.peft_config[adapter_name])
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = base_model_name(model)
    config.inference_mode = True
    if config.task_type is None and getattr(config, "auto_mapping", None) is None:
        base_cls = type(base_model_of(model))
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


def _merge_changed(module: BaseTunerLayer, leaf: str) -> bool:
    """Whether the merged adapters of `module` changed its base tensor `leaf` (the weight always; the bias
    only for adapters that merge into it, e.g. LoRA with `lora_bias`)."""
    if leaf != "bias":
        return True
    return any(module._merged_bias(name) is not None for name in module.merged_adapters)


def _check_no_merged_base_tensors(model: nn.Module, adapter_name: str, tensors: dict[str, Any]) -> None:
    """Base-layer tensors saved with an adapter (embedding layers, biases) must be the base model's own:
    in a layer an adapter is merged into they may hold the merged values, which loading would add again."""
    merged = {
        f"{name}.base_layer.": module
        for name, module in model.named_modules()
        if isinstance(module, BaseTunerLayer) and module.merged_adapters
    }
    for key in tensors:
        for prefix, module in merged.items():
            if key.startswith(prefix) and _merge_changed(module, key[len(prefix) :]):
                raise ValueError(
                    f"Saving adapter '{adapter_name}' would write the base tensor '{key}', into which adapter(s) "
                    f"{sorted(module.merged_adapters)} are merged, so the file would hold merged values. Call "
                    "unmerge_adapter() before saving, then merge again."
                )


def _save_adapter(
    folder: str,
    tensors: dict[str, torch.Tensor],
    config: PeftConfig,
    safe_serialization: bool,
    metadata: dict,
) -> None:
    """Write one adapter's (prepared) weights and config into `folder` in the crash-safe order."""
    path = os.path.join(folder, weights_file_name(safe_serialization))
    with staged_file(path) as staged:
        write_weights_file(staged.tmp, tensors, safe_serialization=safe_serialization, metadata=metadata)
        _check_written(staged.tmp, tensors, safe_serialization)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, CONFIG_NAME))  # from here on, the folder refuses to load
        staged.commit()
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(folder, _other_weights_name(safe_serialization)))
    config.save_pretrained(folder)


def _other_weights_name(safe_serialization: bool) -> str:
    """The weights file of the format not written: a stale one could be loaded instead of the new one."""
    return WEIGHTS_NAME if safe_serialization else SAFETENSORS_WEIGHTS_NAME


def write_adapter_folder(
    folder: str | os.PathLike, tensors: dict[str, torch.Tensor], config: PeftConfig
) -> None:
    """Write an adapter folder from its file-format tensors (keys as PEFT saves them) and its config (an
    adapter converted from another format), with `save_pretrained`'s guarantees: the folder is replaced as a
    whole, or where it cannot be, written in the crash-safe order (the config last)."""
    prepared = prepare_for_saving(tensors)
    metadata = {"peftkit_version": __version__}
    stale = {_other_weights_name(True)}
    replace_folder(
        os.fspath(folder),
        lambda root: _save_adapter(root, prepared, config, True, metadata),
        keep=lambda path: path not in stale,
    )


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

    # gather and check everything first: a failure here leaves the folder untouched
    plans = []
    for adapter_name in names:
        subfolder = _adapter_subfolder(save_directory, adapter_name)
        tensors = get_peft_model_state_dict(
            model,
            state_dict=full_state_dict,
            adapter_name=adapter_name,
            save_embedding_layers=save_embedding_layers,
        )
        if not tensors:
            raise ValueError(f"Adapter '{adapter_name}' has no tensors to save; nothing was written.")
        _check_no_merged_base_tensors(model, adapter_name, tensors)
        config = _config_to_save(model, adapter_name)
        if path_initial_model_for_weight_conversion is not None:  # PiSSA/OLoRA/CorDA -> plain LoRA, rank 2r
            tensors, config = convert_initialized_to_plain_lora(
                tensors, config, os.fspath(path_initial_model_for_weight_conversion)
            )
        tuner = tuner_of(model)
        empty_ok = {k for k in tensors if tuner is not None and tuner._may_be_empty(k, adapter_name)}
        plans.append((subfolder, prepare_for_saving(tensors, empty_ok), config))

    metadata = {"peftkit_version": __version__}
    stale = {
        os.path.join(sub, _other_weights_name(safe_serialization)).replace(os.sep, "/") for sub, _, _ in plans
    }

    def write(root: str) -> None:
        for subfolder, tensors, config in plans:
            folder = os.path.join(root, subfolder)
            os.makedirs(folder, exist_ok=True)
            _save_adapter(folder, tensors, config, safe_serialization, metadata)
        write_model_card(model, root, unless_in=save_directory)

    replace_folder(save_directory, write, keep=lambda path: path not in stale)


def write_model_card(model: nn.Module, output_dir: str, unless_in: str | None = None) -> None:
    """Write a model card README.md (library, base model, tags) unless the folder (or `unless_in`, the
    folder a save replaces) already has one."""
    path = os.path.join(output_dir, MODEL_CARD_NAME)
    if os.path.exists(path) or (
        unless_in is not None and os.path.exists(os.path.join(unless_in, MODEL_CARD_NAME))
    ):
        return
    config = next(iter(model.peft_config.values()))
    base = config.base_model_name_or_path or base_model_name(model) or ""
    method = getattr(config.peft_type, "value", str(config.peft_type)).lower()
    task = getattr(config.task_type, "value", None)
    pipeline = {"CAUSAL_LM": "text-generation", "SEQ_2_SEQ_LM": "text2text-generation"}.get(task or "")
    # As PEFT: the base model and the transformers tags only for a transformers model (one with a config);
    # a custom torch module has no model id to point at.
    is_transformers = getattr(base_model_of(model), "config", None) is not None
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
