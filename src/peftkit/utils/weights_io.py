"""Reading and writing adapter weight files, safely.

Reading never runs code from a file: safetensors is preferred, and a `.bin` file is read only with
`torch.load(weights_only=True)`, only when no safetensors file exists (and never when refused).
Writing goes to a staged temporary file that the caller commits (see `persistence.save_peft_model`),
and refuses tensors that cannot be right.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .constants import SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from .hub import HUB_KWARGS, AdapterNotCachedError, resolve_adapter_file
from .warnings import AdapterLoadError

_PEFT_PREFIX = "base_model.model."


def prepare_for_saving(
    tensors: dict[str, torch.Tensor], empty_ok: Collection[str] = ()
) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors that share no storage (safetensors refuses shared memory).

    A 1-D zero-size tensor is refused (an un-gathered shard) unless its key is in `empty_ok` (a method's
    tensor that is empty by its config, e.g. FRoD's sparse values with no sparse entries).
    """
    seen: set[int] = set()
    prepared: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach()
        if tensor.device.type == "meta":
            raise ValueError(f"Cannot save '{key}': it is on the meta device (its data was never loaded).")
        if (
            tensor.shape == (0,) and key not in empty_ok
        ):  # (r=0, in)-shaped: an AdaLoRA layer, all ranks pruned
            raise ValueError(
                f"Refusing to save '{key}' with shape {tuple(tensor.shape)}: a zero-size tensor usually means a "
                "sharded parameter (FSDP/DeepSpeed ZeRO-3) that was not gathered before saving."
            )
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)  # tied or strided: an own copy
        seen.add(storage)
        prepared[key] = tensor.cpu()
    return prepared


def _save_safetensors(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    """The safetensors writer (a seam: tests replace it to simulate a crash mid-write)."""
    save_file(tensors, path, metadata=metadata)


def _save_bin(tensors: dict[str, torch.Tensor], path: str) -> None:
    torch.save(tensors, path)


def write_weights_file(
    path: str, tensors: dict[str, torch.Tensor], safe_serialization: bool = True, metadata: dict | None = None
) -> None:
    """Write `tensors` (already prepared) to `path` in the chosen format (not atomic by itself)."""
    if safe_serialization:
        _save_safetensors(tensors, path, {"format": "pt", **(metadata or {})})
    else:
        _save_bin(tensors, path)


def written_shapes(path: str, safe: bool) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a weights file, read back from its header (safetensors) or its tensors (.bin)."""
    if safe:
        with safe_open(path, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    loaded = torch.load(path, weights_only=True, map_location="cpu")
    return {k: tuple(v.shape) for k, v in loaded.items()}


def weights_file_name(safe_serialization: bool) -> str:
    return SAFETENSORS_WEIGHTS_NAME if safe_serialization else WEIGHTS_NAME


def find_weights_file(model_id: str, allow_bin: bool = True, **hub_kwargs: Any) -> tuple[str, bool]:
    """Locate the weights file of an adapter: (path, is_safetensors). Safetensors wins when both exist."""
    not_cached: AdapterNotCachedError | None = None
    try:
        path = resolve_adapter_file(model_id, SAFETENSORS_WEIGHTS_NAME, **hub_kwargs)
    except AdapterNotCachedError as err:  # offline: a cached .bin of the same revision still serves
        path, not_cached = None, err
    if path is not None:
        return path, True
    try:
        path = resolve_adapter_file(model_id, WEIGHTS_NAME, **hub_kwargs)
    except AdapterNotCachedError:
        if not_cached is not None:
            raise not_cached from None
        raise
    if path is not None:
        if not allow_bin:
            raise AdapterLoadError(
                f"'{model_id}' has only a pickle-based '{WEIGHTS_NAME}' and loading .bin files was refused "
                "(allow_bin=False). Convert it to safetensors, or allow .bin (read with weights_only=True)."
            )
        return path, False
    if not_cached is not None:
        raise not_cached
    where = os.path.join(str(model_id), hub_kwargs.get("subfolder") or "")
    raise AdapterLoadError(
        f"Can't find weights for '{where}': neither '{SAFETENSORS_WEIGHTS_NAME}' nor '{WEIGHTS_NAME}' is there."
    )


def load_weights_file(
    path: str, is_safetensors: bool, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Read a weights file; a truncated or corrupt file is an `AdapterLoadError` naming it."""
    try:
        if is_safetensors:
            tensors = load_file(path, device=str(device))
        else:
            tensors = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        raise AdapterLoadError(
            f"Could not read adapter weights from '{path}' ({type(err).__name__}: {err}). The file is truncated "
            "or corrupt; save or download the adapter again."
        ) from err
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise AdapterLoadError(
            f"'{path}' does not hold a flat dict of tensors, so it is not an adapter weights file."
        )
    return tensors


def apply_key_mapping(
    tensors: dict[str, torch.Tensor], key_mapping: dict[str, str]
) -> dict[str, torch.Tensor]:
    """Rename keys with regex `pattern -> replacement` pairs (the first pattern that matches wins).

    As in PEFT, the patterns see keys without the `base_model.model.` prefix, which is put back after.
    """
    compiled = [(re.compile(pattern), repl) for pattern, repl in key_mapping.items()]
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        has_prefix = key.startswith(_PEFT_PREFIX)
        name = key[len(_PEFT_PREFIX) :] if has_prefix else key
        for pattern, repl in compiled:
            name, count = pattern.subn(repl, name)
            if count:
                break
        renamed[_PEFT_PREFIX + name if has_prefix else name] = tensor
    return renamed


def read_adapter_weights(
    model_id: str | os.PathLike,
    device: str | torch.device | None = None,
    allow_bin: bool = True,
    key_mapping: dict[str, str] | None = None,
    **hub_kwargs: Any,
) -> dict[str, torch.Tensor]:
    """Load the adapter weights of `model_id` (a folder or Hub id) onto `device` (CPU by default)."""
    return read_adapter_weights_file(model_id, device, allow_bin, key_mapping, **hub_kwargs)[0]


def read_adapter_weights_file(
    model_id: str | os.PathLike,
    device: str | torch.device | None = None,
    allow_bin: bool = True,
    key_mapping: dict[str, str] | None = None,
    **hub_kwargs: Any,
) -> tuple[dict[str, torch.Tensor], str]:
    """`read_adapter_weights`, also returning the path of the file read."""
    path, is_safetensors = find_weights_file(os.fspath(model_id), allow_bin=allow_bin, **hub_kwargs)
    tensors = load_weights_file(path, is_safetensors, device or "cpu")
    return (apply_key_mapping(tensors, key_mapping) if key_mapping else tensors), path


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
    unknown = sorted(set(hf_hub_download_kwargs) - set(HUB_KWARGS))
    if unknown:
        raise TypeError(
            f"load_peft_weights() got unexpected keyword arguments {unknown}; it accepts {list(HUB_KWARGS)}."
        )
    return read_adapter_weights(model_id, device=device, key_mapping=key_mapping, **hf_hub_download_kwargs)
