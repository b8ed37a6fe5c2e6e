"""Export a PEFT LoRA adapter as a llama.cpp LoRA adapter (GGUF), for llama.cpp, llama-cpp-python, ollama.

llama.cpp applies `W x + s * B (A x)` with one `adapter.lora.alpha` per file and `s = alpha / r` per
tensor (r read from the tensor's shape). A PEFT adapter's scale can differ between modules (alpha_pattern,
rsLoRA with rank_pattern): the alpha written is the one most modules need, and where a module's own
scale differs, the ratio is folded into its B factor, so every module computes the same delta as in PEFT.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..._version import __version__
from ...persistence.lora_factors import LoraFactors, read_lora_adapter
from ...utils.atomic_io import atomic_target
from .base_model import BaseModelShape, describe_base_model
from .errors import GGUFConversionError, require_gguf
from .names import (
    LORA_A_SUFFIX,
    LORA_B_SUFFIX,
    TensorName,
    gguf_tensor_name,
    interleave_rows,
    supported_modules,
)

EXPORT_DTYPES = ("f32", "f16", "bf16", "q8_0")
_Q8_0_BLOCK = 32  # Q8_0 quantizes rows in blocks of 32 values; other rows are written as f16
_PURPOSE = "exported to llama.cpp"


@dataclass(frozen=True)
class GGUFExport:
    """What `export_lora_to_gguf` wrote."""

    path: Path
    architecture: str
    alpha: float
    modules: int
    tensor_types: dict[str, int]  # GGML type name -> number of tensors stored in it
    base: str  # where the base model's shape was read from


def _place(modules: list[LoraFactors], shape: BaseModelShape) -> list[tuple[TensorName, LoraFactors]]:
    """Each module's GGUF tensor; one error naming every module llama.cpp has no place for."""
    placed, problems = [], []
    for factors in modules:
        name = gguf_tensor_name(factors.module)
        if name is None:
            problems.append(f"{factors.module} (no llama.cpp tensor)")
        elif name.layer is not None and name.layer >= shape.n_layer:
            problems.append(f"{factors.module} (the base model has {shape.n_layer} layers)")
        elif name.kind == "output" and not shape.has_output:
            problems.append(f"{factors.module} (the base model ties its output head to the token embeddings)")
        elif shape.weight_shapes is not None and shape.weight_shapes.get(name.gguf) != (
            factors.lora_b.shape[0],
            factors.lora_a.shape[1],
        ):
            found = shape.weight_shapes.get(name.gguf)
            problems.append(
                f"{factors.module} (delta {factors.lora_b.shape[0]}x{factors.lora_a.shape[1]}, base weight "
                f"{name.gguf} {'missing' if found is None else 'x'.join(map(str, found))})"
            )
        else:
            placed.append((name, factors))
    if problems:
        raise GGUFConversionError(
            f"These adapted modules cannot be {_PURPOSE} on {shape.source}: {'; '.join(problems[:8])}"
            + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
            + f". Exportable: {', '.join(supported_modules())} (in model.layers.N)."
        )
    return placed


def _file_alpha(modules: list[LoraFactors]) -> float:
    """The alpha most modules need (`alpha / r` is their scale), as the float32 the file stores."""
    counts = Counter((m.rank, m.scale) for m in modules)
    rank, scale = max(counts, key=lambda key: (counts[key], -key[0]))
    alpha = scale * rank if scale != 0 else float(rank)  # llama.cpp reads alpha 0 as "no scaling"
    return float(torch.tensor(alpha, dtype=torch.float32))


def _scaled_b(factors: LoraFactors, alpha: float) -> torch.Tensor:
    """B with the module's scale folded in where llama.cpp's `alpha / r` differs from it."""
    ratio = factors.scale / (alpha / factors.rank)
    return factors.lora_b if math.isclose(ratio, 1.0, rel_tol=1e-7) else factors.lora_b * ratio


def _encode(gguf: Any, tensor: torch.Tensor, dtype: str) -> tuple[Any, Any, str]:
    """(array, raw GGML type or None, type name) for the writer; q8_0 falls back to f16 for short rows."""
    kinds = gguf.GGMLQuantizationType
    if dtype == "f32":
        return tensor.contiguous().numpy(), None, "F32"
    if dtype == "f16" or (dtype == "q8_0" and tensor.shape[-1] % _Q8_0_BLOCK):
        return tensor.half().contiguous().numpy(), None, "F16"
    raw = kinds.BF16 if dtype == "bf16" else kinds.Q8_0
    return gguf.quants.quantize(tensor.contiguous().numpy(), raw), raw, raw.name


def _file_type(gguf: Any, dtype: str) -> int:
    kinds = gguf.LlamaFileType
    return {
        "f32": kinds.ALL_F32,
        "f16": kinds.MOSTLY_F16,
        "bf16": kinds.MOSTLY_BF16,
        "q8_0": kinds.MOSTLY_Q8_0,
    }[dtype]


def export_lora_to_gguf(
    adapter: str | os.PathLike,
    output: str | os.PathLike,
    base: str | os.PathLike | None = None,
    dtype: str = "f32",
    overwrite: bool = False,
    local_files_only: bool = False,
) -> GGUFExport:
    """Write the LoRA adapter at `adapter` (saved by peft or peftkit) as a llama.cpp LoRA adapter file.

    Args:
        adapter: the adapter folder (or Hub id).
        output: the `.gguf` file to write (atomically: a reader sees no file or the complete one).
        base: the base model, for its architecture and attention heads: the GGUF file the adapter will
            run on (its shapes are checked too), a transformers model folder, its config.json, or a Hub
            id. Default: the adapter's `base_model_name_or_path`.
        dtype: "f32", "f16", "bf16" or "q8_0" (q8_0 rows whose length is not a multiple of 32, such as
            B factors of rank 16, are written in f16, as llama.cpp's own converter does).
        overwrite: replace an existing `output`.
        local_files_only: read a Hub base model's config.json from the cache only.

    Raises:
        UnsupportedAdapterError: for adapters that are not plain LoRA (DoRA, other methods, embeddings,
            modules_to_save copies, ...), naming each part.
        GGUFConversionError: for modules llama.cpp has no tensor for, or an unknown/unsupported base model.
        FileExistsError: when `output` exists and `overwrite` is False.
    """
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}.")
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"'{output}' exists; pass overwrite=True (--overwrite) to replace it.")
    if output.is_dir():
        raise IsADirectoryError(f"'{output}' is a folder; the export is one file (e.g. adapter.gguf).")
    gguf = require_gguf("Exporting to GGUF")
    lora = read_lora_adapter(adapter, _PURPOSE)
    if base is None and lora.base_model is None:
        raise GGUFConversionError(
            f"The adapter '{adapter}' records no base model; pass the base model (its GGUF file, folder or config)."
        )
    shape = describe_base_model(base if base is not None else lora.base_model, local_files_only)
    placed = _place(lora.modules, shape)
    alpha = _file_alpha(lora.modules)

    output.parent.mkdir(parents=True, exist_ok=True)
    types: Counter[str] = Counter()
    with atomic_target(output) as tmp:
        writer = gguf.GGUFWriter(tmp, shape.architecture)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(Path(os.fspath(adapter)).name or "adapter")
        writer.add_description(f"LoRA adapter exported by peftkit {__version__}")
        if lora.base_model:
            writer.add_base_model_count(1)
            writer.add_base_model_name(0, lora.base_model)
        # the head counts let `import_lora_from_gguf` restore the query/key row order without the base
        writer.add_block_count(shape.n_layer)
        writer.add_head_count(shape.n_head)
        writer.add_head_count_kv(shape.n_head_kv)
        writer.add_file_type(_file_type(gguf, dtype))
        if dtype == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for name, factors in placed:
            lora_b = _scaled_b(factors, alpha)
            if shape.interleaves_qk:
                lora_b = interleave_rows(lora_b, name.kind, shape.n_head, shape.n_head_kv)
            for suffix, tensor in ((LORA_A_SUFFIX, factors.lora_a), (LORA_B_SUFFIX, lora_b)):
                array, raw, type_name = _encode(gguf, tensor, dtype)
                writer.add_tensor(name.gguf + suffix, array, raw_dtype=raw)
                types[type_name] += 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        _check_written(gguf, tmp, 2 * len(placed))
    return GGUFExport(output, shape.architecture, alpha, len(placed), dict(types), shape.source)


def _check_written(gguf: Any, path: str, expected: int) -> None:
    """Read the file back before it replaces anything: a short or unreadable write is an error."""
    count = len(gguf.GGUFReader(path).tensors)
    if count != expected:
        raise OSError(
            f"The GGUF file written holds {count} tensors instead of {expected}; nothing was replaced."
        )
