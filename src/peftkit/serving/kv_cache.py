"""The running batch's key/value cache: one transformers `DynamicCache` whose rows join and leave.

Every row shares one time axis. A row that joins with a shorter history is padded on the left with zero
keys and values, which its attention mask hides; rows that finish are dropped; once every remaining row
starts with padding, those columns are cut. Each row therefore computes what it would compute alone,
up to the summation order of matmuls of another shape.

Only full-attention layers (`DynamicLayer`: keys/values of shape (batch, heads, time, head_dim)) are
handled; a model with sliding-window or other cache layers is refused when the engine starts.
"""

from __future__ import annotations

from typing import Any

import torch


def check_supported(cache: Any) -> None:
    """Raise when `cache` has layers other than plain growing full-attention ones."""
    for layer in getattr(cache, "layers", None) or []:
        if getattr(layer, "is_sliding", False) or not hasattr(layer, "keys"):
            raise NotImplementedError(
                f"peftkit serve batches full-attention caches only; this model's cache has a "
                f"{type(layer).__name__} layer (sliding window or compressed). Serve a Llama-style model."
            )
    if not hasattr(cache, "layers"):
        raise NotImplementedError(
            f"peftkit serve needs a transformers cache with `layers` (DynamicCache), got {type(cache).__name__}."
        )


def length(cache: Any) -> int:
    return cache.layers[0].keys.shape[-2] if cache.layers and cache.layers[0].keys is not None else 0


def _map(cache: Any, fn) -> None:
    for layer in cache.layers:
        layer.keys, layer.values = fn(layer.keys), fn(layer.values)


def pad_left(cache: Any, columns: int) -> None:
    """Prepend `columns` zero time steps to every row (in place)."""
    if columns > 0:
        _map(cache, lambda t: torch.cat([t.new_zeros(*t.shape[:2], columns, t.shape[3]), t], dim=2))


def zero_padding(cache: Any, mask: torch.Tensor) -> None:
    """Zero the cached keys and values where `mask` (batch, time) is 0: padding positions computed from
    nothing meaningful could hold NaN, and a masked NaN value still poisons attention (0 * NaN)."""
    hidden = (mask == 0)[:, None, :, None]
    if bool(hidden.any()):
        _map(cache, lambda t: t.masked_fill(hidden, 0))


def append_rows(cache: Any, other: Any) -> None:
    """Put the rows of `other` under those of `cache`, padding whichever is shorter on the left."""
    gap = length(other) - length(cache)
    pad_left(cache, gap)
    pad_left(other, -gap)
    for mine, theirs in zip(cache.layers, other.layers):
        mine.keys = torch.cat([mine.keys, theirs.keys], dim=0)
        mine.values = torch.cat([mine.values, theirs.values], dim=0)


def keep_rows(cache: Any, rows: torch.Tensor) -> None:
    """Keep only `rows` (indices into the batch), in that order."""
    _map(cache, lambda t: t.index_select(0, rows))


def cut_left(cache: Any, columns: int) -> None:
    """Drop the first `columns` time steps (padding of every row)."""
    if columns > 0:
        _map(cache, lambda t: t[:, :, columns:].contiguous())
