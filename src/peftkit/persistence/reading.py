"""Reading an adapter's files so that a load never mixes two saves, and naming them in every failure.

A save replaces the whole folder at once (`persistence.saving`), but a loader reads two files, the
config and then the weights, and a save may land between the two. `read_adapter_files` therefore
compares the folder's identity (inode and timestamps) before and after reading both; if a save changed
the folder meanwhile, it reads again. A failure while the folder was changing is retried the same way.

`building_from` turns any failure while an adapter is built from these files (a config value the
layers cannot use, tensors that do not fit) into an `AdapterLoadError` naming the file, and stops a
corrupt size in the config from allocating huge tensors (`utils.allocation_guard`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import PeftConfig
from ..utils.allocation_guard import adapter_size_limit, tensor_size_limit
from ..utils.constants import CONFIG_NAME
from ..utils.folder_swap import folder_identity
from ..utils.warnings import AdapterLoadError
from ..utils.weights_io import read_adapter_weights_file

# kwargs PeftConfig.from_pretrained understands (force_download only matters for weight files)
_CONFIG_HUB_KWARGS = ("subfolder", "revision", "cache_dir", "token", "local_files_only")
# a save takes milliseconds to seconds; a folder rewritten this many times during one read is rewritten
# in a loop
_READ_ATTEMPTS = 50


@dataclass
class AdapterFiles:
    """What was read: the config (None when not asked for), the weights, and where they came from."""

    config: PeftConfig | None
    weights: dict[str, torch.Tensor]
    config_path: str
    weights_path: str


def _local_folder(model_id: str, subfolder: str | None) -> str | None:
    return os.path.join(model_id, subfolder or "") if os.path.isdir(model_id) else None


def _read_once(
    model_id: str,
    with_config: bool,
    hub_kwargs: dict[str, Any],
    device: str | torch.device,
    allow_bin: bool,
    key_mapping: dict[str, str] | None,
) -> AdapterFiles:
    config = None
    if with_config:
        config = PeftConfig.from_pretrained(
            model_id, **{k: v for k, v in hub_kwargs.items() if k in _CONFIG_HUB_KWARGS}
        )
    weights, path = read_adapter_weights_file(model_id, device, allow_bin, key_mapping, **hub_kwargs)
    config_path = os.path.join(model_id, hub_kwargs.get("subfolder") or "", CONFIG_NAME)
    return AdapterFiles(config, weights, config_path, path)


def read_adapter_files(
    model_id: str,
    with_config: bool,
    hub_kwargs: dict[str, Any],
    device: str | torch.device,
    allow_bin: bool = True,
    key_mapping: dict[str, str] | None = None,
) -> AdapterFiles:
    """Read the config (if `with_config`) and the weights of adapter `model_id` (a folder or a Hub id)
    from one and the same save, even while other processes save into the folder."""
    folder = _local_folder(model_id, hub_kwargs.get("subfolder"))
    if folder is None:  # a Hub snapshot does not change under us
        return _read_once(model_id, with_config, hub_kwargs, device, allow_bin, key_mapping)
    for attempt in range(_READ_ATTEMPTS):
        before = folder_identity(folder)
        try:
            files = _read_once(model_id, with_config, hub_kwargs, device, allow_bin, key_mapping)
        except Exception:
            if folder_identity(folder) == before:
                raise  # the folder is as it was: the error is real
        else:
            if folder_identity(folder) == before:
                return files
        time.sleep(0.001 * attempt)  # let the save finish its swap
    raise AdapterLoadError(
        f"'{folder}' changed {_READ_ATTEMPTS} times while it was being read: another process keeps saving into "
        "it. Load it once that process has finished saving."
    )


@contextmanager
def building_from(path: str, model: nn.Module, weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """Errors in this block (building or filling an adapter from `path`) become `AdapterLoadError`s that
    name `path`; tensors far larger than the model's and the file's are refused before they are filled."""
    try:
        with tensor_size_limit(adapter_size_limit(model, weights), f"The adapter in '{path}'"):
            yield
    except AdapterLoadError as err:
        if path in str(err):
            raise
        raise AdapterLoadError(f"Loading '{path}': {err}") from err
    except Exception as err:
        raise AdapterLoadError(f"Loading '{path}' failed: {type(err).__name__}: {err}") from err
