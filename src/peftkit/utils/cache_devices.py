"""Putting each layer's part of a key/value cache on the device that layer runs on (models dispatched
over several devices by accelerate's `device_map`), before a cache built elsewhere is fed to them."""

from __future__ import annotations

import re
from typing import Any

_OFFLOADED = ("cpu", "disk")


def _layer_devices(model: Any) -> dict[int, Any]:
    """Decoder layer index -> the device it computes on, from `model.hf_device_map` (offloaded parts run
    on the main accelerator)."""
    device_map = model.hf_device_map
    main = next((d for d in device_map.values() if d not in _OFFLOADED), "cpu")
    execution = {name: main if device in _OFFLOADED else device for name, device in device_map.items()}
    count = model.config.num_hidden_layers
    if set(execution) == {""}:
        return dict.fromkeys(range(count), execution[""])
    found: dict[int, Any] = {}
    for name, device in execution.items():
        for index in (int(m) for m in re.findall(r"(?:^|\.)(\d+)(?=\.|$)", name)):
            if index < count:
                found.setdefault(index, device)
                break
    missing = [index for index in range(count) if index not in found]
    if missing:
        raise RuntimeError(f"layer {missing[0]} has not been mapped to a device.")
    return found


def map_cache_to_layer_device_map(model: Any, cache: Any) -> None:
    """Move the keys and values of every layer of `cache` (a transformers `Cache`) to the device of that
    layer of `model`; nothing for a model that is not dispatched (no `hf_device_map`) or another cache."""
    from transformers import Cache, EncoderDecoderCache

    if not (isinstance(cache, Cache) and hasattr(model, "hf_device_map")):
        return
    if isinstance(cache, EncoderDecoderCache):
        map_cache_to_layer_device_map(model, cache.self_attention_cache)
        return
    for index, device in _layer_devices(model).items():
        if index >= len(cache.layers):
            break
        layer = cache.layers[index]
        if getattr(layer, "keys", None) is not None:
            layer.keys = layer.keys.to(device)
            layer.values = layer.values.to(device)
