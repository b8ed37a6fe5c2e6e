"""Reading and writing adapter weight files, safely.

Reading never runs code from a file: safetensors is preferred, and a `.bin` file is read only with
`torch.load(weights_only=True)`, only when no safetensors file exists (and never when refused).
Writing is atomic (temporary file, then rename) and refuses tensors that cannot be right.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .atomic_io import atomic_target
from .constants import SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from .hub import resolve_adapter_file
from .warnings import AdapterLoadError


def _prepare_for_safetensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors that share no storage (safetensors refuses shared memory)."""
    seen: set[tuple[int, int]] = set()
    prepared: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach()
        if tensor.device.type == "meta":
            raise ValueError(f"Cannot save '{key}': it is on the meta device (its data was never loaded).")
        if tensor.numel() == 0:
            raise ValueError(
                f"Refusing to save '{key}' with shape {tuple(tensor.shape)}: a zero-size tensor usually means a "
                "sharded parameter (FSDP/DeepSpeed ZeRO-3) that was not gathered before saving."
            )
        storage = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        tensor = tensor.contiguous()
        if storage in seen or not tensor.is_contiguous():
            tensor = tensor.clone()
        seen.add(storage)
        prepared[key] = tensor.cpu()
    return prepared


def write_adapter_weights(
    folder: str, tensors: dict[str, torch.Tensor], safe_serialization: bool = True, metadata: dict | None = None
) -> str:
    """Write `tensors` to the adapter weights file in `folder`, atomically; return the file's path."""
    prepared = _prepare_for_safetensors(tensors)
    if safe_serialization:
        from safetensors.torch import save_file

        path = os.path.join(folder, SAFETENSORS_WEIGHTS_NAME)
        with atomic_target(path) as tmp:
            save_file(prepared, tmp, metadata={"format": "pt", **(metadata or {})})
    else:
        path = os.path.join(folder, WEIGHTS_NAME)
        with atomic_target(path) as tmp:
            torch.save(prepared, tmp)
    return path


def find_weights_file(model_id: str, allow_bin: bool = True, **hub_kwargs: Any) -> tuple[str, bool]:
    """Locate the weights file of an adapter: (path, is_safetensors)."""
    path = resolve_adapter_file(model_id, SAFETENSORS_WEIGHTS_NAME, **hub_kwargs)
    if path is not None:
        return path, True
    path = resolve_adapter_file(model_id, WEIGHTS_NAME, **hub_kwargs)
    if path is not None:
        if not allow_bin:
            raise AdapterLoadError(
                f"'{model_id}' has only a pickle-based '{WEIGHTS_NAME}' and loading .bin files was refused "
                "(allow_bin=False). Convert it to safetensors, or allow .bin (read with weights_only=True)."
            )
        return path, False
    where = os.path.join(str(model_id), hub_kwargs.get("subfolder") or "")
    raise AdapterLoadError(
        f"Can't find weights for '{where}': neither '{SAFETENSORS_WEIGHTS_NAME}' nor '{WEIGHTS_NAME}' is there."
    )


def read_adapter_weights(
    model_id: str, device: str | None = None, allow_bin: bool = True, **hub_kwargs: Any
) -> dict[str, torch.Tensor]:
    """Load the adapter weights of `model_id` (a folder or Hub id) onto `device` (CPU by default)."""
    hub_kwargs = {k: v for k, v in hub_kwargs.items() if k in ("subfolder", "revision", "cache_dir", "token", "local_files_only")}
    path, is_safetensors = find_weights_file(str(model_id), allow_bin=allow_bin, **hub_kwargs)
    device = device or "cpu"
    try:
        if is_safetensors:
            from safetensors.torch import load_file

            return load_file(path, device=device)
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        raise AdapterLoadError(
            f"Could not read adapter weights from '{path}': {err}. The file is truncated or corrupt; save or "
            "download the adapter again."
        ) from err
