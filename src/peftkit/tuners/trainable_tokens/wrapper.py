"""LoRA's `trainable_token_indices`: a TrainableTokensLayer put around embedding layers beside a LoRA adapter.

The tree is PEFT's: the embedding becomes `TrainableTokensWrapper(original_module=None,
token_adapter=TrainableTokensLayer(base_layer=<embedding>))`, so the trained rows are
`<embedding>.token_adapter.trainable_tokens_delta.<adapter>` and are saved without the adapter name. With
tied input/output embeddings the output head is wrapped the same way and shares the trained rows (saved
once, under the input embedding).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...utils.auxiliary_wrapper import AuxiliaryTrainingWrapper
from ...utils.other import get_submodules
from .._tuner_layer import BaseTunerLayer
from .layer import TrainableTokensLayer


class TrainableTokensWrapper(AuxiliaryTrainingWrapper):
    """Holds the TrainableTokensLayer of an embedding trained with LoRA's `trainable_token_indices`.

    Attributes it does not have (weight, num_embeddings, padding_idx...) are the embedding's."""

    def __init__(self, token_adapter: TrainableTokensLayer) -> None:
        super().__init__()
        self.register_module("original_module", None)  # PEFT's tree shows this empty slot
        self.token_adapter = token_adapter

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.token_adapter(x, *args, **kwargs)

    def wrapped_module(self) -> nn.Module:
        return self.token_adapter.get_base_layer()


def _named(model: nn.Module, suffix: str) -> list[str]:
    return [name for name, _ in model.named_modules() if name == suffix or name.endswith("." + suffix)]


def _module_name(model: nn.Module, module: nn.Module | None) -> str | None:
    if module is None:
        return None
    return next((name for name, m in model.named_modules() if m is module), None)


def token_targets(model: nn.Module, indices: list[int] | dict[str, list[int]]) -> dict[str, list[int]]:
    """Module name -> token ids, from LoRA's `trainable_token_indices` (a list targets the input embedding)."""
    if isinstance(indices, dict):
        found: dict[str, list[int]] = {}
        for suffix, ids in indices.items():
            names = _named(model, suffix)
            if not names:
                raise ValueError(
                    f"trainable_token_indices names {suffix!r}, but the model has no module of that name; use the "
                    "name of its embedding layer (e.g. 'embed_tokens')."
                )
            found.update({name: list(ids) for name in names})
        return found
    getter = getattr(model, "get_input_embeddings", None)
    name = _module_name(model, getter()) if getter is not None else None
    if name is None:
        names = _named(model, "embed_tokens")
        if not names:
            raise ValueError(
                "trainable_token_indices is a list, but the model has no input embedding (get_input_embeddings) "
                "and no 'embed_tokens' module; pass a dict {<embedding module name>: [token ids]}."
            )
        name = names[0]
    return {name: list(indices)}


def _wrap(
    model: nn.Module,
    name: str,
    adapter_name: str,
    ids: list[int],
    tied: TrainableTokensLayer | None,
    inference_mode: bool,
) -> TrainableTokensLayer:
    parent, target, target_name = get_submodules(model, name)
    if isinstance(target, TrainableTokensWrapper):
        target.token_adapter.update_layer(adapter_name, ids, inference_mode=inference_mode)
        return target.token_adapter
    if isinstance(target, BaseTunerLayer):
        raise TypeError(
            f"trainable_token_indices cannot be applied to modules of type {type(target)} ({name} is already "
            "adapted); leave the embedding out of target_modules, or train it with LoRA only."
        )
    layer = TrainableTokensLayer(target, adapter_name, ids, tied_adapter=tied, inference_mode=inference_mode)
    setattr(parent, target_name, TrainableTokensWrapper(layer))
    return layer


def inject_trainable_tokens(
    model: nn.Module,
    adapter_name: str,
    indices: list[int] | dict[str, list[int]],
    active_adapters: list[str],
    inference_mode: bool = False,
) -> list[TrainableTokensLayer]:
    """Wrap the embedding layers named by `indices` (and a tied output head) for `adapter_name`.

    Returns the layers that got the adapter.
    """
    input_embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    input_name = _module_name(model, input_embedding)
    input_weight = getattr(input_embedding, "weight", None)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = output is not None and input_weight is not None and getattr(output, "weight", None) is input_weight
    output_name = _module_name(model, output) if tied else None
    layers = []
    for name, ids in token_targets(model, indices).items():
        layer = _wrap(model, name, adapter_name, ids, None, inference_mode)
        layers.append(layer)
        if output_name is not None and name == input_name and output_name != input_name:
            layers.append(_wrap(model, output_name, adapter_name, ids, layer, inference_mode))
    for layer in layers:
        layer.set_adapter(active_adapters, inference_mode=inference_mode)
    return layers


def token_state_keys(model: nn.Module, adapter_name: str, prefix: str = "model.") -> dict[str, str]:
    """State-dict key -> file key of the trained rows of `adapter_name` (tied output heads excluded)."""
    keys: dict[str, str] = {}
    for name, module in model.named_modules():
        tied = isinstance(module, TrainableTokensLayer) and module.tied_adapter is not None
        if (
            isinstance(module, TrainableTokensLayer)
            and not tied
            and adapter_name in module.trainable_tokens_delta
        ):
            base = f"{prefix}{name}.trainable_tokens_delta"
            keys[f"{base}.{adapter_name}"] = base
    return keys


def drop_token_wrappers(model: nn.Module) -> None:
    """After unloading: replace each TrainableTokensWrapper by the (now plain) module it holds."""
    for name, module in list(model.named_modules()):
        if isinstance(module, TrainableTokensWrapper):
            parent, _, target_name = get_submodules(model, name)
            inner = module.token_adapter
            if isinstance(inner, TrainableTokensLayer):
                inner = inner.get_base_layer()
            setattr(parent, target_name, inner)
