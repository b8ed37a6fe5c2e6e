"""Saving adapters of a model sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`).

FSDP2 turns parameters into DTensors: each rank holds a shard (possibly an empty one, e.g. row 1 of a
rank-1 LoRA factor on a second rank). Saving needs the full tensors, and gathering them is a collective:
every rank must take part, in the same order, even though only the main process writes. So
`save_pretrained` gathers the adapter tensors on every rank first and hands them in as `state_dict`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..tuners._adapter_keys import adapter_key_map

__all__ = ["gather_sharded_adapter_state_dict", "has_sharded_parameters"]


def _is_dtensor(tensor: torch.Tensor) -> bool:
    return type(tensor).__name__ == "DTensor" and hasattr(tensor, "full_tensor")


def has_sharded_parameters(model: nn.Module) -> bool:
    """Whether any parameter of `model` is a DTensor (FSDP2 / tensor parallel)."""
    return any(_is_dtensor(p) for p in model.parameters())


def gather_sharded_adapter_state_dict(
    model: nn.Module, adapter_names: list[str] | None = None, save_embedding_layers: str | bool = "auto"
) -> dict[str, torch.Tensor] | None:
    """The model's state dict with the tensors that saving the adapters reads gathered to full tensors
    (the base weights stay sharded), or None when no parameter is sharded (nothing to gather).

    A collective under FSDP2: call it on every rank. Keys are the model's state-dict keys, as
    `save_pretrained(state_dict=...)` takes them.
    """
    if not has_sharded_parameters(model):
        return None

    state = model.state_dict()
    wanted: set[str] = set()
    for name in adapter_names or list(model.peft_config):
        wanted |= set(adapter_key_map(model, name, list(state), save_embedding_layers=save_embedding_layers))
    # the state dict's order is the same on every rank, so are the collectives
    return {
        key: value.full_tensor() if key in wanted and _is_dtensor(value) else value
        for key, value in state.items()
    }
