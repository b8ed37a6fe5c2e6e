"""Turning a key/value prefix (prefix tuning, Cartridge) into the transformers `Cache` the base model reads as its cache
(`cache`, `past_key_values` before transformers 5.24)."""

from __future__ import annotations

from typing import Any

import torch

from ..config import PromptLearningConfig
from ..utils.peft_types import PeftType

# the methods whose virtual tokens are a key/value prefix, served to the model as its cache
KV_PREFIX_TYPES = (PeftType.PREFIX_TUNING, PeftType.CARTRIDGE)


def is_kv_prefix(config: PromptLearningConfig) -> bool:
    """Whether `config`'s method is a key/value prefix (prefix tuning, Cartridge) rather than prompt tokens."""
    return config.peft_type in KV_PREFIX_TYPES


def split_prefix(prefix: torch.Tensor, config: PromptLearningConfig) -> list[torch.Tensor]:
    """(batch, tokens, num_layers * 2 * token_dim) -> the `num_layers * 2` blocks of shape
    (batch, heads, tokens, head_dim), in the order layer 0 key, layer 0 value, layer 1 key, ..."""
    batch, tokens, _ = prefix.shape
    heads = config.num_attention_heads
    head_dim = config.token_dim // heads
    blocks = prefix.view(batch, tokens, config.num_layers * 2, heads, head_dim)
    return list(blocks.permute(2, 0, 3, 1, 4).contiguous().unbind(0))


def _decoder_pairs(
    blocks: list[torch.Tensor], config: PromptLearningConfig
) -> list[tuple[torch.Tensor, ...]]:
    """The (key, value) pair of each decoder layer.

    Decoder-only models: layer i takes blocks 2i and 2i+1. Encoder-decoder models
    (`num_transformer_submodules=2`): layer i takes blocks 4i and 4i+1, counted modulo the number of
    blocks; this is where PEFT 0.21 places them (observed on its caches), so a prefix trained with
    either library means the same to both.
    """
    stride = 2 * config.num_transformer_submodules
    count = len(blocks)
    pairs = []
    for layer in range(config.num_layers):
        first = (stride * layer) % count
        pairs.append((blocks[first], blocks[first + 1]))
    return pairs


def prefix_to_cache(prefix: torch.Tensor, config: PromptLearningConfig, is_encoder_decoder: bool):
    """A fresh `DynamicCache` (decoder-only) or `EncoderDecoderCache` (self-attention prefixes, empty
    cross-attention cache) holding the prefix; the model appends its own keys and values to it."""
    from transformers import DynamicCache, EncoderDecoderCache

    pairs = _decoder_pairs(split_prefix(prefix, config), config)
    if config.num_transformer_submodules == 2 and is_encoder_decoder:
        cache = EncoderDecoderCache(DynamicCache(pairs), DynamicCache())
        cache.is_updated = dict.fromkeys(range(len(pairs)), False)
        return cache
    return DynamicCache(pairs)


def write_prefix_into(target: Any, prefix_cache: Any) -> Any:
    """Copy `prefix_cache` (from `prefix_to_cache`) into the caller's empty cache object `target` and
    return it: generation then fills the object the caller passed, as it does without an adapter."""
    from transformers import EncoderDecoderCache

    if isinstance(target, EncoderDecoderCache):
        write_prefix_into(target.self_attention_cache, prefix_cache.self_attention_cache)
        target.is_updated = dict(prefix_cache.is_updated)
        return target
    for index, layer in enumerate(prefix_cache.layers):
        target.update(layer.keys, layer.values, index)
    return target
