"""Read a llama.cpp LoRA adapter (GGUF) back into per-module LoRA factors in transformers' layout.

The file is parsed by the `gguf` package (metadata and tensor tables only; nothing in it is executed).
Tensors stored as f16, bf16 or q8_0 are de-quantized to float32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...persistence.lora_factors import LoraFactors, natural_order
from .base_model import BaseModelShape
from .errors import GGUFConversionError, require_gguf
from .names import (
    GGUF_ARCHITECTURES,
    INTERLEAVED_QK,
    LORA_A_SUFFIX,
    LORA_B_SUFFIX,
    deinterleave_rows,
    gguf_tensor_name,
    module_name,
)


@dataclass
class GGUFLoraFile:
    """The contents of a llama.cpp LoRA adapter file."""

    path: Path
    architecture: str
    alpha: float  # 0 means "no alpha": llama.cpp then scales by 1 instead of alpha / r
    base_model: str | None
    n_head: int | None  # written by peftkit's export (llama.cpp's converter does not write them)
    n_head_kv: int | None
    n_layer: int | None
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]  # GGUF weight -> (lora_a (r, in), lora_b (out, r))
    tensor_types: dict[str, str]  # tensor name -> GGML type name
    other_tensors: list[str] = field(default_factory=list)  # not LoRA factors (e.g. norms from mergekit)
    metadata: dict[str, Any] = field(default_factory=dict)  # the scalar metadata fields

    @property
    def scale_rule(self) -> str:
        return "alpha / r" if self.alpha else "1 (no alpha)"


def _scalar_fields(reader: Any) -> dict[str, Any]:
    found = {}
    for key, value in reader.fields.items():
        if key.startswith("GGUF.") or len(value.types) != 1:  # header fields and arrays
            continue
        found[key] = value.contents()
    return found


def read_gguf_lora(path: str | os.PathLike) -> GGUFLoraFile:
    """Read a llama.cpp LoRA adapter file; GGUFConversionError when it is not one."""
    gguf = require_gguf("Reading a GGUF adapter")
    path = Path(path)
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError) as err:
        raise GGUFConversionError(f"'{path}' is not a readable GGUF file: {err}") from err
    meta = _scalar_fields(reader)
    if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
        kind = f"a GGUF {meta.get('general.type') or 'model'}"
        raise GGUFConversionError(f"'{path}' is {kind}, not a llama.cpp LoRA adapter (general.type=adapter).")
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise GGUFConversionError(f"'{path}' does not name its architecture (general.architecture).")
    halves: dict[str, dict[str, torch.Tensor]] = {}
    types, others = {}, []
    for tensor in reader.tensors:
        types[tensor.name] = tensor.tensor_type.name
        for suffix in (LORA_A_SUFFIX, LORA_B_SUFFIX):
            if tensor.name.endswith(suffix):
                values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
                halves.setdefault(tensor.name.removesuffix(suffix), {})[suffix] = torch.tensor(values).float()
                break
        else:
            others.append(tensor.name)
    pairs = {}
    for name, half in sorted(halves.items()):
        if len(half) != 2:
            raise GGUFConversionError(f"'{path}' holds only one of {name}.lora_a / .lora_b.")
        lora_a, lora_b = half[LORA_A_SUFFIX], half[LORA_B_SUFFIX]
        if lora_a.dim() != 2 or lora_b.dim() != 2 or lora_a.shape[0] != lora_b.shape[1]:
            raise GGUFConversionError(
                f"'{path}': {name} has factors of shapes {tuple(lora_a.shape)} and {tuple(lora_b.shape)}, "
                "which do not multiply (a and b of rank r: (r, in) and (out, r))."
            )
        pairs[name] = (lora_a, lora_b)
    base = meta.get("general.base_model.0.name")
    return GGUFLoraFile(
        path=path,
        architecture=arch,
        alpha=float(meta.get("adapter.lora.alpha") or 0.0),
        base_model=base if isinstance(base, str) else None,
        n_head=meta.get(f"{arch}.attention.head_count"),
        n_head_kv=meta.get(f"{arch}.attention.head_count_kv"),
        n_layer=meta.get(f"{arch}.block_count"),
        pairs=pairs,
        tensor_types=types,
        other_tensors=others,
        metadata=meta,
    )


def _head_counts(lora: GGUFLoraFile, base: BaseModelShape | None) -> tuple[int, int]:
    if base is not None:
        return base.n_head, base.n_head_kv
    if isinstance(lora.n_head, int):
        return lora.n_head, lora.n_head_kv if isinstance(lora.n_head_kv, int) else lora.n_head
    raise GGUFConversionError(
        f"'{lora.path}' ({lora.architecture}) stores its query/key factors in llama.cpp's row order, and "
        "restoring transformers' order needs the attention head counts, which the file does not record: "
        "pass the base model (its GGUF file, model folder or config.json)."
    )


def gguf_lora_factors(lora: GGUFLoraFile, base: BaseModelShape | None = None) -> list[LoraFactors]:
    """The file's factors under transformers' module names, in transformers' row order."""
    if lora.architecture not in GGUF_ARCHITECTURES:
        raise GGUFConversionError(
            f"'{lora.path}' is a {lora.architecture} adapter; its tensor names can be read back for "
            f"{', '.join(GGUF_ARCHITECTURES)}."
        )
    if base is not None and base.architecture != lora.architecture:
        raise GGUFConversionError(
            f"'{lora.path}' is a {lora.architecture} adapter, but the base model ({base.source}) is "
            f"{base.architecture}."
        )
    unknown = [name for name in lora.pairs if module_name(name) is None]
    if unknown:
        raise GGUFConversionError(
            f"'{lora.path}' adapts tensors with no transformers module: {', '.join(unknown)}."
        )
    heads = _head_counts(lora, base) if lora.architecture in INTERLEAVED_QK else None
    factors = []
    for name, (lora_a, lora_b) in lora.pairs.items():
        module = module_name(name)
        if heads is not None:
            lora_b = deinterleave_rows(lora_b, gguf_tensor_name(module).kind, *heads)
        scale = lora.alpha / lora_a.shape[0] if lora.alpha else 1.0
        factors.append(LoraFactors(module, lora_a, lora_b, scale))
    return sorted(factors, key=lambda f: natural_order(f.module))
