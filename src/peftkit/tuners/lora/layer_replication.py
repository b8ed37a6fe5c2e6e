"""LoRA's `layer_replication`: stack ranges of a model's decoder layers into a deeper model.

`layer_replication=[[0, 4], [2, 5]]` turns layers `[0, 1, 2, 3, 4]` into `[0, 1, 2, 3, 2, 3, 4]` (the
mergekit "passthrough" format: half-open ranges, concatenated). A repeated layer is a new module that
shares every parameter and buffer with the first occurrence, so memory stays close to the original;
each position then gets its own LoRA adapter, which is what lets the copies specialise. Attention
modules' `layer_idx` (the KV-cache slot) and the config's `num_hidden_layers` follow the new order.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn

# Where decoder layers live, in the architectures PEFT supports (Llama-like, BERT-like, Falcon/GPT-2-like).
_LAYER_LISTS = ("model.layers", "layers", "bert.encoder.layer", "encoder.layer", "transformer.h", "h")


def _layer_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """(parent, attribute name, the ModuleList of decoder layers) of `model`."""
    for path in _LAYER_LISTS:
        parent_path, _, attr = path.rpartition(".")
        try:
            parent = model.get_submodule(parent_path) if parent_path else model
        except AttributeError:
            continue
        layers = getattr(parent, attr, None)
        if isinstance(layers, nn.ModuleList):
            return parent, attr, layers
    inner = getattr(model, "model", None)  # a task head around a base model (LlamaForCausalLM.model)
    if isinstance(inner, nn.Module) and inner is not model:
        return _layer_list(inner)
    raise ValueError(
        "Could not locate the layers attribute in the model. Expected Llama, Bert or Falcon compatible "
        "architectures (a ModuleList at model.layers, encoder.layer or transformer.h) for layer_replication."
    )


def _shared_clone(layer: nn.Module) -> nn.Module:
    """A new module tree identical to `layer` whose parameters and buffers are `layer`'s own tensors."""
    memo = {id(t): t for t in list(layer.parameters()) + list(layer.buffers())}
    return copy.deepcopy(layer, memo)


def replicate_layers(model: nn.Module, layer_map: Sequence[Sequence[int]]) -> None:
    """Rebuild the model's layer list as the concatenation of the ranges in `layer_map` (in place)."""
    parent, attr, layers = _layer_list(model)
    count = len(layers)
    order: list[int] = []
    for pair in layer_map:
        if len(pair) != 2 or not 0 <= pair[0] < pair[1] <= count:
            raise ValueError(
                f"layer_replication entries must be [start, end) ranges within the model's {count} layers, got "
                f"{list(pair)}."
            )
        order.extend(range(pair[0], pair[1]))
    used: set[int] = set()
    new_layers = []
    for index in order:
        new_layers.append(layers[index] if index not in used else _shared_clone(layers[index]))
        used.add(index)
    for position, layer in enumerate(new_layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = position
    setattr(parent, attr, nn.ModuleList(new_layers))
    config = getattr(model, "config", None)
    if config is not None:
        if hasattr(config, "num_hidden_layers"):
            config.num_hidden_layers = len(new_layers)
        layer_types = getattr(config, "layer_types", None)
        if isinstance(layer_types, list) and len(layer_types) == count:
            config.layer_types = [layer_types[i] for i in order]


def apply_layer_replication(tuner: nn.Module, model: nn.Module, layer_map: Sequence[Sequence[int]]) -> None:
    """Replicate once per model: a later adapter with the same map reuses the deeper model."""
    wanted = [list(pair) for pair in layer_map]
    done = getattr(tuner, "_layer_replication", None)
    if done is None:
        replicate_layers(model, wanted)
        tuner._layer_replication = wanted
    elif done != wanted:
        raise ValueError(
            f"The model's layers were already replicated with layer_replication={done}; a further adapter cannot use "
            f"{wanted}. Give every adapter of this model the same layer_replication."
        )


def check_no_shared_merge(tuner: nn.Module) -> None:
    """Merging into replicated layers would add each copy's delta into the one shared weight: refuse."""
    if getattr(tuner, "_layer_replication", None) is not None:
        raise ValueError(
            "Cannot merge LoRA adapters into a model with layer_replication: the replicated layers share their base "
            "weights, so each copy's update would be added to the same tensor. Keep the adapters unmerged."
        )


def is_replica_tie(name: str, others: list[str]) -> bool:
    """Whether every module sharing `name`'s weight is the same module of another (replicated) layer: the
    names differ only in the layer index, e.g. `model.layers.0.mlp.up_proj` and `model.layers.3.mlp.up_proj`."""

    def shape(module_name: str) -> list[str]:
        return ["#" if part.isdigit() else part for part in module_name.split(".")]

    return all(shape(other) == shape(name) for other in others)
