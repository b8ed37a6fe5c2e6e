"""Static inspection of an adapter folder: its config and the header of its weights file.

Nothing here needs the adapter's method to be implemented: the config is read as plain JSON and a
safetensors file only up to its header (8 bytes of length, then a JSON table of tensor names, dtypes and
shapes), so adapters of every method peft writes can be described.
"""

from __future__ import annotations

import json
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CliError
from .hub_access import hub_files_only_from_cache, looks_like_hub_id

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = (("adapter_model.safetensors", "safetensors"), ("adapter_model.bin", "pytorch (.bin)"))
_BYTES_PER = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
# The first name component of an adapter tensor in PEFT's files (lora_A, hada_w1_a, ia3_l, oft_R, ...).
_ADAPTER_PART = re.compile(
    r"^(lora|hada|lokr|ia3|oft|boft|vera|fourierft|hra|bone|miss|vblora|randlora|c3a|shira|road|delora|"
    r"gralora|waveft|adalora|poly|ln_tuning|ranknum)(_|$)"
)


@dataclass
class TensorInfo:
    """One tensor of the weights file."""

    name: str
    dtype: str
    shape: list[int]

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@dataclass
class ModuleGroup:
    """Adapted modules whose names differ only in layer numbers, e.g. `model.layers.*.self_attn.q_proj`."""

    pattern: str
    count: int = 0
    tensors: dict[str, list[int]] = field(default_factory=dict)  # tensor name -> shape (of the first module)
    rank: int | None = None
    alpha: float | None = None


def read_safetensors_header(path: Path) -> tuple[list[TensorInfo], dict[str, str]]:
    """Tensor names, dtypes and shapes, and the metadata, from a safetensors file's header only."""
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CliError(f"{path} is not a safetensors file (it is shorter than a header).")
        (length,) = struct.unpack("<Q", head)
        if length > 100_000_000:
            raise CliError(f"{path} is not a safetensors file (its header length {length} is implausible).")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CliError(
                f"{path} is not a valid safetensors file (its header is not JSON: {err})."
            ) from err
    metadata = header.pop("__metadata__", None) or {}
    tensors = [TensorInfo(name, info["dtype"], list(info["shape"])) for name, info in sorted(header.items())]
    return tensors, metadata


def verify_safetensors(path: Path) -> dict[str, int]:
    """Read the whole file: CliError when it is truncated or corrupt; else the count of non-finite values
    (NaN, inf) per tensor that has any.

    The header alone does not show a truncated file (it comes first), so the data region is checked
    against the offsets the header records, and every tensor is read.
    """
    import torch
    from safetensors.torch import load_file

    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    data_bytes = path.stat().st_size - 8 - length
    needed = max((info["data_offsets"][1] for info in header.values()), default=0)
    if needed > data_bytes:
        raise CliError(
            f"{path} is truncated: its header records {needed:,} bytes of tensor data, but the file holds "
            f"{max(data_bytes, 0):,}. Save or download the adapter again."
        )
    try:
        tensors = load_file(path)
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise CliError(
            f"{path} is corrupt ({type(err).__name__}: {err}); save or download the adapter again."
        ) from err
    return {
        name: int((~torch.isfinite(t)).sum())
        for name, t in tensors.items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    }


def read_bin_tensors(path: Path) -> list[TensorInfo]:
    """Tensor names, dtypes and shapes of a `.bin` file (loaded with weights_only=True, memory-mapped)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise CliError(f"{path} cannot be read as a PyTorch weights file: {err}") from err
    if not isinstance(state, dict):
        raise CliError(f"{path} does not hold a state dict.")
    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
    return [TensorInfo(k, names.get(v.dtype, str(v.dtype)), list(v.shape)) for k, v in sorted(state.items())]


def split_key(key: str) -> tuple[str, str]:
    """(module, tensor) of a key in PEFT's file format: `...q_proj.lora_A.weight` -> (`...q_proj`, `lora_A.weight`).

    Keys without an adapter part (modules_to_save copies, saved embeddings) split at their last dot.
    """
    parts = key.removeprefix("base_model.model.").split(".")
    for i, part in enumerate(parts):
        if _ADAPTER_PART.match(part):
            return ".".join(parts[:i]), ".".join(parts[i:])
    return ".".join(parts[:-1]), parts[-1]


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    for pattern, value in patterns.items():  # peft's rule: the first key matching the end of the name
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def group_modules(tensors: list[TensorInfo], config: dict[str, Any]) -> list[ModuleGroup]:
    """Adapted modules grouped by name pattern (layer numbers replaced by *), with rank and alpha each."""
    groups: dict[str, ModuleGroup] = {}
    seen: dict[str, set[str]] = {}
    rank = config.get("r")
    alpha = config.get("lora_alpha", config.get("alpha"))
    for t in tensors:
        module, tensor = split_key(t.name)
        pattern = re.sub(r"(?<=\.)\d+(?=\.|$)", "*", module) or "(top level)"
        group = groups.setdefault(pattern, ModuleGroup(pattern))
        if module not in seen.setdefault(pattern, set()):
            seen[pattern].add(module)
            group.count += 1
            group.rank = _pattern_value(config.get("rank_pattern") or {}, module, rank)
            group.alpha = _pattern_value(config.get("alpha_pattern") or {}, module, alpha)
        group.tensors.setdefault(tensor, t.shape)
    for group in groups.values():  # a LoRA file says its rank itself: lora_A is (r, in)
        if "lora_A.weight" in group.tensors:
            group.rank = group.tensors["lora_A.weight"][0]
        if not any(_ADAPTER_PART.match(name) for name in group.tensors):
            group.rank = group.alpha = None  # a full copy (modules_to_save), not an adapted module
    return list(groups.values())


def human_size(n_bytes: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError("unreachable")


def find_adapter_files(location: str) -> tuple[Path, Path, str]:
    """(config file, weights file, format name) of a local adapter folder or a Hub adapter repo."""
    from ..utils.hub import resolve_adapter_file
    from ..utils.warnings import AdapterLoadError

    path = Path(location).expanduser()
    if path.is_file():
        raise CliError(
            f"'{location}' is a file; an adapter is a folder holding {CONFIG_FILE} and the weights."
        )
    if path.is_dir() and not (path / CONFIG_FILE).is_file():
        subs = sorted(p.parent.name for p in path.glob(f"*/{CONFIG_FILE}"))
        hint = f" Its sub-folders hold adapters: {', '.join(subs)}." if subs else ""
        raise CliError(f"'{location}' is not a valid adapter: there is no {CONFIG_FILE} in it.{hint}")
    # a Hub id: fail at once when offline and not cached, instead of after huggingface_hub's retries
    cache_only = looks_like_hub_id(location) and hub_files_only_from_cache(
        location, CONFIG_FILE, "The adapter"
    )
    try:
        config = resolve_adapter_file(location, CONFIG_FILE, local_files_only=cache_only)
        if config is None:
            raise CliError(f"'{location}' is not a valid adapter: it has no {CONFIG_FILE}.")
        for name, kind in WEIGHT_FILES:
            weights = resolve_adapter_file(location, name, local_files_only=cache_only)
            if weights is not None:
                return Path(config), Path(weights), kind
    except AdapterLoadError as err:
        raise CliError(str(err)) from err
    raise CliError(
        f"'{location}' is not a valid adapter: it has {CONFIG_FILE} but no adapter_model.safetensors/.bin."
    )


def read_config(path: Path) -> dict[str, Any]:
    """The adapter config as a dict; CliError when it is not a JSON object with a peft_type."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CliError(f"{path} is not valid JSON ({err}); the adapter config is corrupt.") from err
    if not isinstance(config, dict) or not config.get("peft_type"):
        raise CliError(f"{path} is not an adapter config: it has no 'peft_type'.")
    return config


def tensor_summary(tensors: list[TensorInfo]) -> dict[str, Any]:
    """Totals over the tensors of a weights file: count, parameters, bytes (as stored) and dtypes."""
    params = sum(t.numel for t in tensors)
    stored = sum(t.numel * _BYTES_PER.get(t.dtype, 4) for t in tensors)
    return {
        "tensors": len(tensors),
        "parameters": params,
        "bytes": stored,
        "dtypes": dict(Counter(t.dtype for t in tensors)),
    }
