"""Adapters on a plain model, without the PeftModel wrapper: the functions that integrations (such as
transformers' `PreTrainedModel.add_adapter/set_adapter/delete_adapter`) call on a model whose layers were
adapted in place by `inject_adapter_in_model`. The model's `peft_config` dict is left to the caller."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .mapping import inject_adapter_in_model
from .persistence.state_dict import get_peft_model_state_dict, set_peft_model_state_dict
from .tuners.tuners_utils import BaseTunerLayer, check_adapters_not_merged, set_adapter_trainable
from .utils.modules_to_save import ModulesToSaveWrapper

__all__ = [
    "cast_adapter_dtype",
    "delete_adapter",
    "get_peft_model_state_dict",
    "inject_adapter_in_model",
    "set_adapter",
    "set_peft_model_state_dict",
    "set_requires_grad",
]


def _names(adapter_names: str | Sequence[str]) -> list[str]:
    return [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)


def set_adapter(
    model: nn.Module,
    adapter_name: str | list[str],
    inference_mode: bool = False,
    layer_cls: type[BaseTunerLayer] = BaseTunerLayer,
) -> None:
    """Make `adapter_name` (or several) the active adapters of every adapted layer and modules_to_save
    wrapper; only they are trainable, unless `inference_mode`."""
    for module in model.modules():
        if isinstance(module, (layer_cls, ModulesToSaveWrapper)):
            module.set_adapter(adapter_name, inference_mode=inference_mode)


def delete_adapter(
    model: nn.Module, adapter_name: str, prefix: str, layer_cls: type[BaseTunerLayer] = BaseTunerLayer
) -> list[str] | None:
    """Remove adapter `adapter_name` from every layer of `model`.

    Returns the active adapters afterwards (another adapter becomes active if the deleted one was), or
    None when the model has no adapter layer. `prefix` (e.g. "lora_") is accepted for PEFT's signature;
    each layer knows its own adapter tensors, so it is not needed.
    """
    check_adapters_not_merged(model, adapter_name)
    layers = [m for m in model.modules() if isinstance(m, (layer_cls, ModulesToSaveWrapper))]
    for module in layers:
        module.delete_adapter(adapter_name)
    holding = [m for m in layers if isinstance(m, layer_cls) and m._get_available_adapters()]
    new_active = list(holding[0].active_adapters) if holding else None
    if new_active:
        # layers left without adapters report the model's active adapters too (transformers asks the first)
        for module in layers:
            if isinstance(module, layer_cls) and not module._get_available_adapters():
                module.set_adapter(new_active[0] if len(new_active) == 1 else new_active)
    return new_active


def set_requires_grad(
    model: nn.Module, adapter_names: str | Sequence[str], requires_grad: bool = True
) -> None:
    """Turn gradients on or off for the tensors of the given adapters (others are left as they are)."""
    for name in _names(adapter_names):
        set_adapter_trainable(model, name, requires_grad)


def cast_adapter_dtype(model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
    """With `autocast_adapter_dtype`, cast the fp16/bf16 tensors of `adapter_name` to fp32 (in place of
    the tensor data, so optimizers holding the parameters keep seeing them)."""
    if not autocast_adapter_dtype:
        return
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_adapter_dtype(adapter_name, torch.float32)
