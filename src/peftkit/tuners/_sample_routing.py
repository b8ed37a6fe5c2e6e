"""Each sample of a call through its own adapter: what `forward/generate(adapter_names=[...])` sets up.

The call's names become one `MixedBatch` (worked out once, reused by every layer at every decoding step);
an adapter store attached to the model (`PeftModel.adapter_source`) loads the named adapters first; the
request is checked (known names, eval mode, nothing merged, one name per sample); then every adapter layer
and modules_to_save wrapper receives the routing through a forward pre-hook for the length of the call,
expanded when generation multiplies the batch (beams, several return sequences).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ._layer_walk import adapter_modules
from ._mixed_batch import BASE_ADAPTER_NAME, as_mixed_batch
from ._tuner_layer import BaseTunerLayer


def batch_size_of(*candidates: Any) -> int | None:
    """The first dimension of the first tensor among `candidates` (None when there is none)."""
    return next((c.shape[0] for c in candidates if torch.is_tensor(c)), None)


@contextmanager
def route_samples(model: Any, adapter_names: list[str] | None, batch_size: int | None) -> Iterator[None]:
    """Within the block, sample i of `model`'s calls goes through adapter `adapter_names[i]` in every
    adapted layer (`BASE_ADAPTER_NAME`: none). `model` is a PeftModel; nothing happens for None."""
    if adapter_names is None:
        yield
        return
    routing = as_mixed_batch(adapter_names)  # a caller's MixedBatch is kept: see its docstring
    if model.adapter_source is not None:
        model.adapter_source.prepare(routing.adapters)
    layers = list(adapter_modules(model))  # one quick walk per call (this runs before every forward)
    _check(model, routing, batch_size, layers)

    def pre_hook(module, hook_args, hook_kwargs):
        batch = hook_args[0].shape[0] if hook_args and torch.is_tensor(hook_args[0]) else len(routing)
        hook_kwargs["adapter_names"] = routing.for_batch(batch)  # beams / return sequences expand it
        return hook_args, hook_kwargs

    hooks = [module.register_forward_pre_hook(pre_hook, with_kwargs=True) for module in layers]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def _check(model: Any, adapter_names: list[str], batch_size: int | None, layers: list[nn.Module]) -> None:
    unknown = sorted({n for n in adapter_names if n != BASE_ADAPTER_NAME and n not in model.peft_config})
    if unknown:
        raise ValueError(
            f"Trying to infer with non-existing adapter(s): {', '.join(unknown)}; available: "
            f"{sorted(model.peft_config)} (and '{BASE_ADAPTER_NAME}' for the base model)."
        )
    if model.training:
        raise ValueError("Cannot pass `adapter_names` when the model is in training mode.")
    if any(isinstance(m, BaseTunerLayer) and m.merged for m in layers):
        raise ValueError(
            "Cannot pass `adapter_names` while adapters are merged; call unmerge_adapter() first."
        )
    if batch_size is not None and batch_size != len(adapter_names):
        raise ValueError(
            f"Length of `adapter_names` ({len(adapter_names)}) should be the same as the batch size ({batch_size})."
        )
