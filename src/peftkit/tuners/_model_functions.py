"""peft's module-level helpers of `peft.tuners.tuners_utils`: operations on a whole model's adapter layers
written as functions (the tuner's methods do the same through `BaseTuner`), and small model queries.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..utils.constants import UPCAST_DTYPES
from ..utils.modules_to_save import ModulesToSaveWrapper
from ..utils.warnings import PeftWarning
from ._targeting import is_targeted
from ._tuner_layer import BaseTunerLayer, _as_list

if TYPE_CHECKING:
    from .tuners_utils import BaseTuner

# peft's warning text for an adapted layer whose weight is tied to another (peftkit words its own warning
# in `_tied_weights`, which also says what merging will do)
warn_msg_weight_tying = (
    "Model has `tie_word_embeddings=True` and a tied layer is part of the adapter, but no implementation exists "
    "to tie the adapters. This can lead to complications, for example when merging the adapter or converting "
    "your model to formats other than safetensors. Check the discussion here: "
    "https://github.com/huggingface/peft/issues/2777"
)


class BasePromptEncoder(nn.Module):
    """The base class of the prompt-learning encoders (prompt embeddings, prefix encoders, P-tuning's
    prompt encoder, CPT's embedding): the module that turns virtual-token ids into what the model sees."""


def _upcast_dtypes() -> set[torch.dtype]:
    found = {getattr(torch, name, None) for name in UPCAST_DTYPES}
    return {torch.float16, torch.bfloat16} | {d for d in found if d is not None}


def cast_adapter_dtype(model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
    """Cast the fp16/bf16/fp8 tensors of `adapter_name` in every adapter layer of `model` to fp32 (adapters
    train stably in fp32 on a half-precision base); nothing when `autocast_adapter_dtype` is False."""
    if not autocast_adapter_dtype:
        return
    low_precision = _upcast_dtypes()
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            for tensor in module._adapter_tensors(adapter_name):
                if tensor.dtype in low_precision:
                    tensor.data = tensor.data.to(torch.float32)


def check_adapters_to_merge(module: BaseTunerLayer, adapter_names: list[str] | None = None) -> list[str]:
    """The adapters of `adapter_names` (default: the active ones) that `module` has not merged yet; warns
    about those already merged."""
    if adapter_names is None:
        adapter_names = module.active_adapters
    if isinstance(adapter_names, str):
        raise TypeError(f"adapter_names should be a list of strings, got {adapter_names!r}.")
    if not module.merged:
        return list(adapter_names)
    remaining = [name for name in adapter_names if name not in module.merged_adapters]
    if remaining:
        warnings.warn(
            f"Already following adapters were merged {','.join(module.merged_adapters)}. "
            f"You are now additionally merging {','.join(remaining)}.",
            PeftWarning,
        )
    else:
        warnings.warn("All adapters are already merged, nothing to do.", PeftWarning)
    return remaining


def clone_module(module: nn.Module, share_weights: bool = False) -> nn.Module:
    """A deep copy of `module`; with `share_weights`, the copy's parameters are `module`'s own."""
    if not share_weights:
        return copy.deepcopy(module)
    memo = {id(param): param for param in module.parameters()}
    return copy.deepcopy(module, memo)


def delete_adapter(
    model: nn.Module, adapter_name: str, prefix: str, layer_cls: type[BaseTunerLayer] = BaseTunerLayer
) -> list[str] | None:
    """Delete `adapter_name` from every `layer_cls` layer (outside modules whose name contains `prefix`)
    and every `modules_to_save` wrapper of `model`; return the active adapters left (None: no layer)."""
    new_active: list[str] | None = None
    for key, module in model.named_modules():
        if prefix in key:
            continue
        if isinstance(module, layer_cls):
            module.delete_adapter(adapter_name)
            if new_active is None:
                new_active = module.active_adapters[:]
    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            module.delete_adapter(adapter_name)
    return new_active


def set_adapter(
    model: nn.Module,
    adapter_name: str | list[str],
    inference_mode: bool = False,
    layer_cls: type[BaseTunerLayer] = BaseTunerLayer,
) -> None:
    """Make `adapter_name` active in every `layer_cls` layer (unmerging merged ones, with a warning) and
    every `modules_to_save` wrapper of `model` (a wrapper without that adapter computes with the original)."""
    names = _as_list(adapter_name)
    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            known = [name for name in names if name in module.modules_to_save]
            module.set_adapter(known[:1], inference_mode=inference_mode)
        elif isinstance(module, layer_cls):
            if module.merged:
                warnings.warn(
                    "Adapter cannot be set when the model is merged. Unmerging the model first.", PeftWarning
                )
                module.unmerge()
            module.set_adapter(adapter_name, inference_mode=inference_mode)


def find_parameter_name_by_module(model: nn.Module, reference_module: nn.Module) -> str:
    """The name of `reference_module` inside `model` ("" when it is not there)."""
    return next((name for name, module in model.named_modules() if module is reference_module), "")


def get_device_map(model: nn.Module) -> dict[str, Any]:
    """accelerate's `hf_device_map` of a dispatched model, else {"": the device of its first parameter}."""
    if hasattr(model, "hf_device_map"):
        return model.hf_device_map
    return {"": next(model.parameters()).device}


def inspect_matched_modules(tuner: BaseTuner, adapter_name: str = "default") -> dict[str, list[str]]:
    """{"matched": [...], "unmatched": [...]}: which module names of the tuner's model the config of
    `adapter_name` targets."""
    config = tuner.peft_config[adapter_name]
    result: dict[str, list[str]] = {"matched": [], "unmatched": []}
    for key, _ in tuner.model.named_modules():
        result["matched" if is_targeted(config, key) else "unmatched"].append(key)
    return result


def _offload_hook(module: nn.Module) -> Any:
    """accelerate's hook that offloads the weights of `module` (CPU or disk), or None; it may be one of
    the hooks of a `SequentialHook` (what `cpu_offload` attaches)."""
    hook = getattr(module, "_hf_hook", None)
    for candidate in getattr(hook, "hooks", (hook,)):
        if getattr(candidate, "offload", False) and hasattr(candidate, "pre_forward"):
            return candidate
    return None


@contextmanager
def onload_layer(layer: nn.Module) -> Iterator[None]:
    """Within the block, the weights of `layer` (an adapter layer whose modules accelerate offloads) are
    loaded where the layer computes, so they can be read or merged; on exit they are offloaded again, and
    the base layer's offloaded copy is replaced by its current weights (a merge done inside persists)."""
    onloaded = []
    for name, module in layer.named_modules():
        if name in ("", "base_layer"):
            continue
        hook = _offload_hook(module)
        if hook is not None:
            hook.pre_forward(module)
            onloaded.append(module)
    base = getattr(layer, "base_layer", None)
    base_hook = _offload_hook(base) if isinstance(base, nn.Module) else None
    if base_hook is not None:
        base_hook.pre_forward(base)
    try:
        yield
    finally:
        for module in onloaded:
            _offload_hook(module).post_forward(module, torch.tensor([]))
        if base_hook is not None:
            tensors = {**dict(base.named_parameters()), **dict(base.named_buffers())}
            base_hook.weights_map = {name: tensor.detach().to("cpu") for name, tensor in tensors.items()}
            base_hook.post_forward(base, torch.tensor([]))
