"""Activated LoRA (aLoRA, Greenewald et al., 2025): the adapter acts only from its invocation onwards.

With `alora_invocation_tokens` (the token ids of an invocation string), each sequence's adapter
output is applied only to its last `k` positions, where `k` counts the tokens from the start of the
*last* occurrence of the invocation sequence to the end (`alora_offsets`). Earlier positions compute
exactly what the base model computes, so their KV cache is the base model's and can be shared with
the base model and other aLoRA adapters. A sequence without the invocation gets no adapter at all.

    y_t = W x_t + [t >= L - k] * s B A x_t

For causal LMs the offsets are found from `input_ids` at each forward; `alora_offsets=[...]` passed to
the forward overrides them. During cached generation the new tokens come after the invocation, so a
sequence that had it in its prompt gets the adapter on every generated token. Merging is impossible
(the adapter is not applied everywhere).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ...utils.cache_names import get_cache
from ...utils.warnings import PeftWarning
from .layer import Linear, LoraLayer
from .variants import LoraVariant


def find_offsets(input_ids: torch.Tensor, invocation: list[int]) -> list[int | None]:
    """Per row: tokens from the start of the last occurrence of `invocation` to the end (None: absent)."""
    length, n = input_ids.shape[1], len(invocation)
    pattern = torch.tensor(invocation, device=input_ids.device)
    offsets: list[int | None] = []
    for row in input_ids:
        found = None
        for start in range(length - n, -1, -1):
            if torch.equal(row[start : start + n], pattern):
                found = length - start
                break
        offsets.append(found)
    return offsets


class ActivationContext:
    """The offsets of the current forward pass, shared by an adapter's layers (set by a model pre-hook)."""

    def __init__(self, invocation: list[int], from_input_ids: bool) -> None:
        self.invocation = list(invocation)
        self.from_input_ids = from_input_ids
        self.offsets: list[int | None] | None = None
        self._active_rows: list[bool] | None = None  # rows that had the invocation at the cache's prefill

    def begin_forward(self, args: tuple, kwargs: dict, offsets: list[int | None] | None) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args and torch.is_tensor(args[0]) else None)
        cache = get_cache(kwargs)
        cached = cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0
        if offsets is None and cached and self._active_rows is not None and input_ids is not None:
            length = input_ids.shape[1]  # continuing a sequence: the new tokens follow the invocation
            rows = self._active_rows
            if len(rows) != input_ids.shape[0] and input_ids.shape[0] % len(rows) == 0:
                rows = [r for r in rows for _ in range(input_ids.shape[0] // len(rows))]
            offsets = [length if active else None for active in rows]
        elif offsets is None and self.from_input_ids:
            if input_ids is None:
                warnings.warn(
                    "Cannot calculate aLoRA offsets when only inputs_embeds are provided. Disabling aLoRA for this "
                    "forward pass.",
                    PeftWarning,
                )
            else:
                offsets = find_offsets(input_ids, self.invocation)
        if not cached:
            self._active_rows = None if offsets is None else [o is not None and o > 0 for o in offsets]
        self.offsets = list(offsets) if offsets is not None else None

    def mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """(batch, seq, 1) mask of the positions that get the adapter, or None: none do."""
        if self.offsets is None or all(o is None for o in self.offsets) or x.dim() < 3:
            return None
        batch, length = x.shape[0], x.shape[-2]
        offsets = torch.tensor([o or 0 for o in self.offsets], device=x.device)
        if offsets.shape[0] != batch:
            if batch % offsets.shape[0]:
                raise ValueError(f"aLoRA got {offsets.shape[0]} offsets for a batch of {batch}.")
            offsets = offsets.repeat_interleave(batch // offsets.shape[0])
        positions = torch.arange(length, device=x.device)
        return (positions[None, :] >= length - offsets[:, None]).unsqueeze(-1)


class AloraVariant(LoraVariant):
    """aLoRA on a Linear: LoRA's output, kept only at the positions its context's mask selects."""

    name = "aLoRA"
    config_field = "alora_invocation_tokens"
    supports_merge = False  # the adapter is not applied everywhere
    supports_mixed_batch = False  # the offsets are per row of the whole batch, not of a group of samples

    def __init__(self, context: ActivationContext) -> None:
        self.context = context  # shared by the adapter's layers

    def forward(
        self, layer: Any, adapter_name: str, x: torch.Tensor, result: torch.Tensor, base_result: torch.Tensor
    ) -> torch.Tensor:
        mask = self.context.mask(x)
        if mask is None:
            return result
        delta = layer._adapter_output(adapter_name, x, base_result)
        return result + (delta * mask.to(delta.dtype)).to(result.dtype)


class ActivationHook:
    """The model pre-hook that starts every aLoRA adapter's forward pass (one per tuner, for all of them):
    it takes `alora_offsets=` out of the call and gives each context the call's inputs."""

    def __init__(self) -> None:
        self.contexts: dict[str, ActivationContext] = {}

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        offsets = kwargs.pop("alora_offsets", None)
        for context in self.contexts.values():
            context.begin_forward(args, kwargs, offsets)
        return args, kwargs


def install_alora(tuner: Any, model: nn.Module, adapter_name: str) -> None:
    """Make adapter `adapter_name` activated: its Linear layers apply it after the invocation only."""
    config = tuner.peft_config[adapter_name]
    invocation = list(config.alora_invocation_tokens)
    if not invocation:
        raise ValueError("alora_invocation_tokens must be a non-empty list of token ids.")
    if config.use_dora:
        raise ValueError(
            "Invalid or unsupported variant combination: ('alora_invocation_tokens', 'use_dora')"
        )
    task = getattr(config.task_type, "value", config.task_type)
    if task != "CAUSAL_LM":
        warnings.warn(
            "aLoRA is currently only supported for CAUSAL_LM task: without it the offsets are not found from "
            "input_ids; pass alora_offsets= to the forward.",
            PeftWarning,
        )
    context = ActivationContext(invocation, from_input_ids=task == "CAUSAL_LM")
    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and m.has_adapter(adapter_name)]
    unsupported = [
        type(m).__name__ for m in layers if not isinstance(m, Linear) or type(m).__name__ == "ParamWrapper"
    ]
    if unsupported:
        raise ValueError(
            f"Invalid or unsupported variant combination: ('alora_invocation_tokens',) on {sorted(set(unsupported))}; "
            "aLoRA applies to linear layers only."
        )
    for layer in layers:
        layer.set_lora_variant(adapter_name, AloraVariant(context))
    hook = next((h for h in tuner._forward_pre_hooks.values() if isinstance(h, ActivationHook)), None)
    if hook is None:  # the tuner's first aLoRA adapter
        hook = ActivationHook()
        # the tuner's forward calls the model's forward directly, generate() calls the model: hook both
        tuner.register_forward_pre_hook(hook, with_kwargs=True)
        model.register_forward_pre_hook(hook, with_kwargs=True)
    hook.contexts[adapter_name] = context
