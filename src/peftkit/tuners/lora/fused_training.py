"""One autograd node for a LoRA Linear in training: `y = x W^T + b + s * (d(x) A^T) B^T`, frozen W and b
(an `nn.Linear`, or transformers' `Conv1D`, which stores `W^T`).

The unfused formula, run op by op under autograd, allocates two output-sized tensors per layer and step
that it does not need (the out-of-place sum with the adapter's output, and a copy of the output gradient
in its backward) and two input-sized ones (the adapter's share of the input gradient, then the sum of
both shares). On CPU those temporaries cost more than the rank-r matmuls themselves. This node adds the
adapter into the base output in place, and in backward adds the adapter's input gradient into the base
layer's in place:

    forward:   y = x W^T (+ b);  h = d(x) A^T;  y += s h B^T
    backward:  dh = s dy B;  dB = s dy^T h;  dA = dh^T d(x);  dx = dy W (+ dh A when d is the identity)

With peftkit's dropout `d(x) = x * keep * k` the mask is applied here too, and the adapter's input gradient
`(dh A) * keep * k` is added into `dx` in place; any other dropout runs before the node and `d(x)` gets
its gradient `dh A` as an input of its own. Only the common case takes this path (see `applies`); everything
else keeps the op-by-op formula, which gives the same values.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as module_internals

from .._dropout import AdapterDropout
from .bdlora import is_plain


def applies(layer: Any, active: list[str], x: torch.Tensor, args: tuple, kwargs: dict) -> bool:
    """Whether `layer` (a LoRA Linear) can run `active` through the fused training node for input `x`."""
    if len(active) != 1 or args or kwargs or not (layer.training and torch.is_grad_enabled()):
        return False
    name = active[0]
    base = layer.base_layer
    if type(base) not in _base_types() or base.weight.requires_grad:
        return False
    if base.bias is not None and base.bias.requires_grad:
        return False
    # hooks on the base layer (or global ones) would be skipped by calling its weight directly
    if base._forward_hooks or base._forward_pre_hooks or _global_hooks():
        return False
    if layer.use_dora[name] or torch.is_tensor(layer.scaling[name]) or getattr(layer, "_alora", None):
        return False
    lora_A, lora_B = layer.lora_A[name], layer.lora_B[name]
    if not (is_plain(lora_A) and is_plain(lora_B)) or lora_B.bias is not None:
        return False
    dtype = base.weight.dtype
    same_dtype = x.dtype == dtype == lora_A.weight.dtype == lora_B.weight.dtype
    return same_dtype and x.is_floating_point() and not torch.is_autocast_enabled(x.device.type)


def _base_types() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D  # GPT-2 style: y = x W + b, weight stored (in, out)

    return (nn.Linear, Conv1D)


def _global_hooks() -> bool:
    return bool(module_internals._global_forward_hooks or module_internals._global_forward_pre_hooks)


def forward(layer: Any, name: str, x: torch.Tensor) -> torch.Tensor:
    """The layer's training output for adapter `name` (requires `applies(...)`)."""
    base = layer.base_layer
    dropout = layer.lora_dropout[name]
    mask = dropout.cheap_mask(x) if isinstance(dropout, AdapterDropout) and dropout.p > 0 else None
    # the cheap dropout mask is applied inside the node; any other dropout runs before it, under autograd
    dropped = None if mask is not None or isinstance(dropout, nn.Identity) else dropout(x)
    keep, keep_scale = mask if mask is not None else (None, 1.0)
    factors = layer.lora_A[name].weight, layer.lora_B[name].weight
    weight_in_out = base.weight.t() if type(base) is nn.Linear else base.weight  # (in, out) for both
    return _LoraLinear.apply(
        x, dropped, keep, keep_scale, weight_in_out, base.bias, *factors, layer.scaling[name]
    )


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        dropped: torch.Tensor | None,
        keep: torch.Tensor | None,
        keep_scale: float,
        weight_in_out: torch.Tensor,
        bias: torch.Tensor | None,
        lora_A: torch.Tensor,
        lora_B: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor:
        """`dropped`: the adapter input from a dropout run outside; or `keep` (0/1) and `keep_scale`: the
        dropout mask to apply here; neither: no dropout."""
        flat_x = x.reshape(-1, x.shape[-1])
        if keep is not None:
            keep = keep.reshape(flat_x.shape)
            adapter_input = (flat_x * keep).mul_(keep_scale)
        else:
            adapter_input = flat_x if dropped is None else dropped.reshape(flat_x.shape)
        out = flat_x @ weight_in_out if bias is None else torch.addmm(bias, flat_x, weight_in_out)
        hidden = adapter_input @ lora_A.t()
        out.addmm_(hidden, lora_B.t(), alpha=scaling)
        ctx.save_for_backward(adapter_input, hidden, weight_in_out, lora_A, lora_B, keep)
        ctx.scaling, ctx.keep_scale, ctx.input_shape = scaling, keep_scale, x.shape
        ctx.adapter_sees_x = dropped is None  # the adapter's input gradient flows into x's (masked or not)
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple:
        adapter_input, hidden, weight_in_out, lora_A, lora_B, keep = ctx.saved_tensors
        needs_x, needs_dropped, _, _, _, _, needs_A, needs_B, _ = ctx.needs_input_grad
        grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_hidden = (grad @ lora_B).mul_(ctx.scaling)
        grad_A = grad_hidden.t() @ adapter_input if needs_A else None
        grad_B = (grad.t() @ hidden).mul_(ctx.scaling) if needs_B else None
        grad_x = grad_dropped = None
        if needs_x:
            grad_x = grad @ weight_in_out.t()
            if ctx.adapter_sees_x and keep is None:
                grad_x.addmm_(grad_hidden, lora_A)
            elif ctx.adapter_sees_x:  # through the mask: d(x * keep * k)/dx = keep * k
                grad_x.add_((grad_hidden @ lora_A).mul_(keep), alpha=ctx.keep_scale)
            grad_x = grad_x.view(ctx.input_shape)
        if needs_dropped:
            grad_dropped = (grad_hidden @ lora_A).view(ctx.input_shape)
        return grad_x, grad_dropped, None, None, None, None, grad_A, grad_B, None
