"""Import a llama.cpp LoRA adapter (GGUF) as a PEFT adapter folder that peft and peftkit load.

The config is rebuilt from the factors: the most common rank is `r` and other ranks go to
`rank_pattern`; `lora_alpha` is the file's alpha, so each module's scale is `alpha / r` as in llama.cpp
(a file without alpha scales by 1: `lora_alpha = r`, with `alpha_pattern` where ranks differ). The targets
are the adapted module names (short names when every layer has them).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ...persistence.lora_factors import LoraFactors, most_common_rank
from ...persistence.saving import write_adapter_folder
from ...tuners.lora.config import LoraConfig
from .base_model import describe_base_model
from .errors import GGUFConversionError
from .reader import GGUFLoraFile, gguf_lora_factors, read_gguf_lora

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _targets(modules: list[LoraFactors], n_layer: int | None) -> list[str]:
    """Short names (`q_proj`) when each is adapted in every layer, else the full module names."""
    layers_by_short: dict[str, set[int | None]] = {}
    for m in modules:
        match = _LAYER.match(m.module)
        layers_by_short.setdefault(m.module.rsplit(".", 1)[-1], set()).add(int(match[1]) if match else None)
    every_layer = set(range(n_layer)) if n_layer else None
    if every_layer and all(layers in (every_layer, {None}) for layers in layers_by_short.values()):
        return sorted(layers_by_short)
    return [m.module for m in modules]


def lora_config_for(modules: list[LoraFactors], lora: GGUFLoraFile, n_layer: int | None) -> LoraConfig:
    """The LoraConfig under which `modules` compute what llama.cpp computes with `lora`."""
    rank = most_common_rank(modules)
    others = {re.escape(m.module): m.rank for m in modules if m.rank != rank}
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=rank,
        lora_alpha=_number(lora.alpha) if lora.alpha else rank,
        rank_pattern=others,
        alpha_pattern={} if lora.alpha else dict(others),
        target_modules=_targets(modules, n_layer),
        base_model_name_or_path=lora.base_model,
        inference_mode=True,
    )


def import_lora_from_gguf(
    path: str | os.PathLike,
    output_dir: str | os.PathLike,
    base: str | os.PathLike | None = None,
    overwrite: bool = False,
    local_files_only: bool = False,
) -> Path:
    """Write the llama.cpp LoRA adapter `path` as a PEFT adapter folder `output_dir`; returns the folder.

    Args:
        path: a llama.cpp LoRA adapter file (`general.type=adapter`, `adapter.type=lora`).
        output_dir: the adapter folder to write (adapter_config.json + adapter_model.safetensors).
        base: the base model (GGUF file, model folder, config.json or Hub id); needed for Llama-family
            files that do not record their attention head counts (llama.cpp's own converter's), and it
            becomes `base_model_name_or_path` when the file names no base model.
        overwrite: replace an adapter already in `output_dir`.
        local_files_only: read a Hub base model's config.json from the cache only.
    """
    output_dir = Path(output_dir)
    if (output_dir / "adapter_config.json").exists() and not overwrite:
        raise FileExistsError(f"'{output_dir}' already holds an adapter; pass overwrite=True (--overwrite).")
    if output_dir.is_file():
        raise NotADirectoryError(f"'{output_dir}' is a file; the import writes an adapter folder.")
    lora = read_gguf_lora(path)
    if lora.other_tensors:
        raise GGUFConversionError(
            f"'{path}' holds tensors that are not LoRA factors, which a PEFT LoRA adapter cannot hold: "
            f"{', '.join(lora.other_tensors[:8])}."
        )
    shape = describe_base_model(base, local_files_only) if base is not None else None
    modules = gguf_lora_factors(lora, shape)
    if lora.base_model is None and base is not None:
        lora.base_model = os.fspath(base)
    config = lora_config_for(modules, lora, shape.n_layer if shape else lora.n_layer)
    tensors = {}
    for m in modules:
        tensors[f"base_model.model.{m.module}.lora_A.weight"] = m.lora_a
        tensors[f"base_model.model.{m.module}.lora_B.weight"] = m.lora_b
    write_adapter_folder(output_dir, tensors, config)
    return output_dir
