"""A saved LoRA adapter as plain factors: per adapted module, `A`, `B` and the scale of `B @ A`.

Tools that carry an adapter elsewhere (llama.cpp's GGUF files) or compare two adapters need only this.
Whatever a plain `delta_W = scale * B @ A` per weight matrix cannot express (DoRA magnitudes, other
variants, embedding or bias factors, fully trained `modules_to_save` copies, adapters relative to a
modified base) is refused with one error that names each part.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..tuners._scaling import rank_scaling
from ..utils.hub import resolve_adapter_file
from ..utils.other import get_pattern_key
from ..utils.weights_io import load_peft_weights

CONFIG_FILE = "adapter_config.json"
_PREFIX = "base_model.model."
_FACTOR_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")
# LoRA variants and initialisations whose adapters are not a plain `scale * B @ A` on the original weights
_VARIANTS = {
    "use_dora": "DoRA (use_dora=true) rescales the weight by trained magnitudes",
    "alora_invocation_tokens": "aLoRA (alora_invocation_tokens) applies the adapter only after its invocation",
    "use_qalora": "QALoRA (use_qalora=true) pools the input in groups",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "layer_replication": "layer_replication changes the base model's layers",
    "lora_bias": "lora_bias=true trains a bias on lora_B",
}
# initialisations that change the base weights: the adapter only fits the changed base
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


class UnsupportedAdapterError(ValueError):
    """An adapter that is not (only) plain LoRA factors; the message names each part that is not."""


@dataclass
class LoraFactors:
    """One adapted weight: `delta_W = scale * lora_b @ lora_a` (float32, `lora_a` is (r, in))."""

    module: str  # the module's name in the model, e.g. "model.layers.0.self_attn.q_proj"
    lora_a: torch.Tensor
    lora_b: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return self.lora_a.shape[0]


@dataclass
class LoraAdapter:
    """A LoRA adapter's factors, in module order, with what its config records."""

    modules: list[LoraFactors]
    base_model: str | None
    config: dict[str, Any] = field(default_factory=dict)


def _read_config(location: str) -> dict[str, Any]:
    path = resolve_adapter_file(location, CONFIG_FILE)
    if path is None:
        raise UnsupportedAdapterError(f"'{location}' is not an adapter folder: it has no {CONFIG_FILE}.")
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnsupportedAdapterError(f"{path} is not a readable adapter config: {err}") from err
    if not isinstance(config, dict) or "peft_type" not in config:
        raise UnsupportedAdapterError(f"{path} is not an adapter config: it has no 'peft_type'.")
    return config


def _config_problems(config: dict[str, Any]) -> list[str]:
    problems = [why for key, why in _VARIANTS.items() if config.get(key)]
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        problems.append(
            f"init_lora_weights={init!r} changed the base weights, so the adapter fits only that changed base "
            "(save it with path_initial_model_for_weight_conversion= to get a plain LoRA adapter)"
        )
    if config.get("trainable_token_indices"):
        problems.append("trainable_token_indices trains rows of the token embeddings")
    return problems


def _tensor_problem(key: str, config: dict[str, Any]) -> str:
    name = key.removeprefix(_PREFIX)
    if "lora_magnitude_vector" in name:
        return f"DoRA magnitudes ({name})"
    if "lora_embedding_" in name:
        return f"a LoRA on token embeddings ({name})"
    if "trainable_tokens" in name:
        return f"trained token embedding rows ({name})"
    if name.endswith(".lora_B.bias"):
        return f"a LoRA bias ({name})"
    saved = config.get("modules_to_save") or []
    if any(name.startswith(f"{m}.") or f".{m}." in f".{name}" for m in saved):
        return f"a fully trained modules_to_save copy ({name})"
    return f"a tensor that is not a LoRA factor ({name})"


def read_lora_adapter(location: str | os.PathLike, purpose: str) -> LoraAdapter:
    """The plain LoRA factors of the adapter at `location` (a folder or Hub id), in float32.

    Args:
        location: the adapter folder (or Hub repo id).
        purpose: what the factors are for, completing "... cannot be <purpose>" in errors
            (e.g. "exported to llama.cpp").

    Raises:
        UnsupportedAdapterError: naming every part of the adapter that is not plain LoRA factors.
    """
    location = os.fspath(location)
    config = _read_config(location)
    method = str(config["peft_type"])
    if method != "LORA":
        raise UnsupportedAdapterError(
            f"'{location}' is a {method} adapter; only LoRA adapters can be {purpose} "
            "(merge it into the base model instead: `peftkit merge`)."
        )
    problems = _config_problems(config)
    tensors = load_peft_weights(location)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if key.endswith(
            ".base_layer.weight"
        ):  # a copy of a base weight, saved with LoRAs on embeddings/heads
            continue
        match = _FACTOR_KEY.match(key.removeprefix(_PREFIX))
        if match is None or tensor.dim() != 2:
            problems.append(_tensor_problem(key, config) if match is None else f"a convolution LoRA ({key})")
            continue
        pairs.setdefault(match["module"], {})[match["which"]] = tensor
    if problems:
        shown = "; ".join(dict.fromkeys(problems[:8])) + (
            f"; and {len(problems) - 8} more" if len(problems) > 8 else ""
        )
        raise UnsupportedAdapterError(f"The adapter '{location}' cannot be {purpose}: {shown}.")
    return LoraAdapter(_factors(pairs, config, location), config.get("base_model_name_or_path"), config)


def _factors(
    pairs: dict[str, dict[str, torch.Tensor]], config: dict[str, Any], location: str
) -> list[LoraFactors]:
    alpha_pattern = config.get("alpha_pattern") or {}
    modules = []
    for module, pair in sorted(pairs.items(), key=lambda item: natural_order(item[0])):
        if set(pair) != {"A", "B"}:
            raise UnsupportedAdapterError(
                f"The adapter '{location}' has only lora_{''.join(pair)} for {module}."
            )
        lora_a, lora_b = pair["A"].float(), pair["B"].float()
        if lora_b.shape[1] != lora_a.shape[0]:
            raise UnsupportedAdapterError(
                f"The adapter '{location}' holds factors of different ranks for {module}: "
                f"lora_A {tuple(lora_a.shape)}, lora_B {tuple(lora_b.shape)}."
            )
        alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), config.get("lora_alpha", 8))
        scale = rank_scaling(alpha, lora_a.shape[0], bool(config.get("use_rslora")))
        modules.append(LoraFactors(module, lora_a, lora_b, float(scale)))
    if not modules:
        raise UnsupportedAdapterError(f"The adapter '{location}' holds no LoRA factors.")
    return modules


def natural_order(name: str) -> list[Any]:
    """`layers.2` before `layers.10`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def most_common_rank(modules: list[LoraFactors]) -> int:
    """The rank most modules have (the smallest among ties)."""
    counts = Counter(m.rank for m in modules)
    return min(counts, key=lambda r: (-counts[r], r))
