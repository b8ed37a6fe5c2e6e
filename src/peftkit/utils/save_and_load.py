"""peft's module path for adapter state dicts (`peft.utils.save_and_load`); they are defined on the
persistence floor, in `peftkit.persistence.state_dict` and `.base_state_dict` (see `lazy_exports`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .lazy_exports import lazy_exports
from .weights_io import load_peft_weights

_HOMES = {
    "get_peft_model_state_dict": "peftkit.persistence.state_dict",
    "set_peft_model_state_dict": "peftkit.persistence.state_dict",
    "get_base_model_state_dict": "peftkit.persistence.base_state_dict",
    "set_base_model_state_dict": "peftkit.persistence.base_state_dict",
}
__all__ = [
    "get_embedding_layer_name",
    "has_valid_embedding_base_layer",
    "load_peft_weights",
    "torch_load",
    *_HOMES,
]
__getattr__, __dir__ = lazy_exports(globals(), _HOMES)


def torch_load(*args: Any, weights_only: bool = True, **kwargs: Any) -> Any:
    """`torch.load` that reads tensors only by default (`weights_only=True`: no code in the file runs)."""
    return torch.load(*args, weights_only=weights_only, **kwargs)


def has_valid_embedding_base_layer(layer: nn.Module) -> bool:
    """Whether `layer` is an adapter layer over an `nn.Linear` or `nn.Embedding`."""
    return isinstance(getattr(layer, "base_layer", None), (nn.Linear, nn.Embedding))


def get_embedding_layer_name(
    model: nn.Module, layer: nn.Module, is_embedding_in_target_modules: bool
) -> str | None:
    """The name in `model` of the embedding `layer` stands for: its base layer's name, or (when the
    embedding is not itself a target) the name of `layer`; None when neither is in `model`."""
    base = getattr(layer, "base_layer", None)
    for name, module in model.named_modules():
        if (not is_embedding_in_target_modules and module is layer) or module is base:
            return name
    return None
