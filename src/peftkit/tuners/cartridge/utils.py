"""Cartridge helpers: a prefix from a model's own cache, and composing Cartridges by concatenation.

`prompt_embeddings_from_past_key_values` turns a key/value cache (a transformers `Cache`, or the legacy
tuple of (key, value) pairs) into the flat prefix a Cartridge (or prefix tuning) stores;
`initialize_kv_prefix_from_past_key_values` / `initialize_kv_prefix_from_text` load such a prefix into an
adapter (the paper's initialisation from the first tokens of a corpus); `compose_cartridge_adapters`
writes one Cartridge whose prefix is several saved ones one after another.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...config import PeftConfig
from ...utils.atomic_io import atomic_target
from ...utils.cache_names import output_cache
from ...utils.peft_types import PeftType
from ...utils.weights_io import load_peft_weights, prepare_for_saving, weights_file_name, write_weights_file

__all__ = [
    "compose_cartridge_adapters",
    "initialize_kv_prefix_from_past_key_values",
    "initialize_kv_prefix_from_text",
    "prompt_embeddings_from_past_key_values",
]

_KV_PREFIX_TYPES = (PeftType.CARTRIDGE, PeftType.PREFIX_TUNING)
_COMPOSE_MUST_AGREE = (
    "task_type",
    "token_dim",
    "num_layers",
    "num_attention_heads",
    "num_transformer_submodules",
)


def _kv_pairs(past_key_values: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (key, value) pair of every layer of a cache: a transformers `Cache` (an encoder-decoder one
    gives its self-attention part), or a legacy tuple/list of pairs."""
    cache = getattr(past_key_values, "self_attention_cache", past_key_values)
    layers = getattr(cache, "layers", None)
    if layers is not None:  # transformers 5 `Cache`
        return [(layer.keys, layer.values) for layer in layers]
    to_legacy = getattr(cache, "to_legacy_cache", None)
    if callable(to_legacy):
        cache = to_legacy()
    if isinstance(cache, (tuple, list)) or hasattr(cache, "__iter__"):
        pairs = list(cache)
        if all(isinstance(p, (tuple, list)) and len(p) >= 2 for p in pairs):
            return [(p[0], p[1]) for p in pairs]
    raise TypeError(
        f"Unsupported cache type {type(past_key_values).__name__}: pass a transformers Cache (e.g. the `cache` / "
        "`past_key_values` of a forward with use_cache=True) or a tuple of (key, value) pairs per layer."
    )


def prompt_embeddings_from_past_key_values(past_key_values: Any, *, num_virtual_tokens: int) -> torch.Tensor:
    """The first `num_virtual_tokens` cached tokens of a single-sequence cache as a flat prefix,
    (num_virtual_tokens, num_layers * 2 * heads * head_dim): per token, per layer its key then its value,
    head after head (the layout `PeftModel.get_prompt` reads)."""
    pairs = _kv_pairs(past_key_values)
    if not pairs:
        raise ValueError("Empty `past_key_values`: the cache holds no layer.")
    key0 = pairs[0][0]
    if key0.ndim != 4:
        raise ValueError(
            f"Expected key/value tensors of rank 4 (batch, heads, tokens, head_dim), got key.ndim={key0.ndim}."
        )
    if key0.shape[0] != 1:
        raise ValueError(
            f"This helper expects the cache of a single-sequence prefill (batch=1), got batch={key0.shape[0]}."
        )
    heads, head_dim = key0.shape[1], key0.shape[3]
    blocks = []
    for index, (key, value) in enumerate(pairs):
        for tensor in (key, value):
            if tensor.shape[:2] != (1, heads) or tensor.shape[3] != head_dim:
                raise ValueError(
                    f"Inconsistent shapes across layers in `past_key_values`: layer {index} holds "
                    f"{tuple(tensor.shape)}, layer 0 (1, {heads}, tokens, {head_dim})."
                )
            if tensor.shape[2] < num_virtual_tokens:
                raise ValueError(
                    f"Need at least {num_virtual_tokens} cached tokens, layer {index} holds {tensor.shape[2]}: "
                    "prefill a longer text or ask for fewer virtual tokens."
                )
            blocks.append(tensor[0, :, :num_virtual_tokens].transpose(0, 1))  # (tokens, heads, head_dim)
    return torch.stack(blocks, dim=1).reshape(num_virtual_tokens, -1)


def _kv_prefix_config(model: Any, adapter_name: str | None) -> tuple[str, Any]:
    name = model.active_adapter if adapter_name is None else adapter_name
    config = model.peft_config[name]
    if config.peft_type not in _KV_PREFIX_TYPES:
        raise ValueError(
            f"Adapter '{name}' must be a CARTRIDGE or PREFIX_TUNING adapter (got {config.peft_type})."
        )
    if getattr(config, "prefix_projection", False):
        raise ValueError(
            "Initialization from KV cache is not supported for prefix tuning with `prefix_projection=True`: its "
            "prefix is computed by an MLP, not stored. Use a Cartridge or prefix tuning without projection."
        )
    return name, config


def _load_prefix(encoder: torch.nn.Module, prefix: torch.Tensor) -> None:
    """Write a flat prefix into a Cartridge or a (projection-free) prefix-tuning encoder."""
    if hasattr(encoder, "load_prompt_embeddings"):
        encoder.load_prompt_embeddings(prefix)
        return
    weight = encoder.embedding.weight
    if tuple(weight.shape) != tuple(prefix.shape):
        raise ValueError(
            f"Invalid `prompt_embeddings` shape: the adapter holds {tuple(weight.shape)}, got {tuple(prefix.shape)}."
        )
    weight.copy_(prefix)


@torch.no_grad()
def initialize_kv_prefix_from_past_key_values(
    model: Any,
    *,
    adapter_name: str | None = None,
    past_key_values: Any,
    num_virtual_tokens: int | None = None,
) -> torch.Tensor:
    """Load the first tokens of `past_key_values` into a Cartridge or prefix-tuning adapter of the
    PeftModel `model` (the active one by default); returns the flat prefix that was loaded."""
    name, config = _kv_prefix_config(model, adapter_name)
    count = config.num_virtual_tokens if num_virtual_tokens is None else num_virtual_tokens
    prefix = prompt_embeddings_from_past_key_values(past_key_values, num_virtual_tokens=count)
    _load_prefix(model.prompt_encoder[name], prefix)
    return prefix


def _tokenize(tokenizer: Any, text: str, use_chat_template: bool, max_length: int | None) -> torch.Tensor:
    """The token ids of `text`, as a system message of the tokenizer's chat template when it has one."""
    if use_chat_template and hasattr(tokenizer, "apply_chat_template"):
        try:
            ids = tokenizer.apply_chat_template(
                [{"role": "system", "content": text}],
                tokenize=True,
                add_generation_prompt=False,
                return_dict=False,
                return_tensors="pt",
            )
        except (TypeError, ValueError):  # no chat template, or an older signature: plain tokens
            pass
        else:
            return ids if max_length is None else ids[:, :max_length]
    encoded = tokenizer(text, return_tensors="pt", truncation=max_length is not None, max_length=max_length)
    return encoded["input_ids"]


@torch.no_grad()
def initialize_kv_prefix_from_text(
    model: Any,
    tokenizer: Any,
    *,
    text: str,
    adapter_name: str | None = None,
    num_virtual_tokens: int | None = None,
    use_chat_template: bool = True,
    max_length: int | None = None,
) -> torch.Tensor:
    """Prefill the base model (adapters disabled) on `text` and load the first tokens of its cache into a
    Cartridge or prefix-tuning adapter of the PeftModel `model`; returns the flat prefix that was loaded."""
    name, _ = _kv_prefix_config(model, adapter_name)
    input_ids = _tokenize(tokenizer, text, use_chat_template, max_length)
    input_ids = input_ids.to(next(model.parameters()).device)
    with model.disable_adapter():
        outputs = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=True)
    return initialize_kv_prefix_from_past_key_values(
        model, adapter_name=name, past_key_values=output_cache(outputs), num_virtual_tokens=num_virtual_tokens
    )


def compose_cartridge_adapters(
    adapter_paths: Sequence[str | os.PathLike],
    *,
    output_path: str | os.PathLike,
    safe_serialization: bool = True,
) -> None:
    """Write to `output_path` one Cartridge whose prefix is the saved Cartridges' prefixes one after
    another (the paper's composition by concatenation). They must be made for the same model and task;
    the result keeps the first one's `num_frozen_tokens`."""
    paths = [Path(p) for p in adapter_paths]
    if len(paths) < 2:
        raise ValueError("Need at least 2 adapters to compose.")
    configs = [PeftConfig.from_pretrained(str(p)) for p in paths]
    for path, config in zip(paths, configs):
        if config.peft_type != PeftType.CARTRIDGE:
            raise ValueError(f"Adapter at '{path}' is not a CARTRIDGE adapter (got {config.peft_type}).")
    first = configs[0]
    for path, config in zip(paths[1:], configs[1:]):
        for attr in _COMPOSE_MUST_AGREE:
            if getattr(config, attr, None) != getattr(first, attr, None):
                raise ValueError(
                    f"Incompatible CARTRIDGE configs for attribute '{attr}': '{paths[0]}' has "
                    f"{getattr(first, attr, None)!r}, '{path}' has {getattr(config, attr, None)!r}."
                )
    prefix = torch.cat([load_peft_weights(str(p), device="cpu")["prompt_embeddings"] for p in paths], dim=0)
    composed = dataclasses.replace(first, num_virtual_tokens=prefix.shape[0])
    os.makedirs(output_path, exist_ok=True)
    composed.save_pretrained(str(output_path))
    with atomic_target(Path(output_path) / weights_file_name(safe_serialization)) as tmp:
        write_weights_file(tmp, prepare_for_saving({"prompt_embeddings": prefix}), safe_serialization)
