"""Riemannian-preconditioned LoRA (Zhang & Pilanci, 2024): each step scales the LoRA factors' gradients
by an r x r preconditioner before the wrapped optimizer uses them.

For a pair (A: r x in, B: out x r) with Euclidean gradients g_A, g_B:

    g_A <- (B^T B + reg I)^-1 g_A          g_B <- g_B (A A^T + reg I)^-1

(the scaled-gradient direction of the low-rank product; `reg` damps the inverse when a factor is close
to rank-deficient, and a pseudo-inverse keeps it finite). The preconditioners are computed in at least
fp32 and the gradients cast back. Only 2-D `lora_A`/`lora_B` pairs that both train are preconditioned;
every other trainable tensor (embedding LoRA factors, DoRA magnitudes, modules_to_save) is updated by the
wrapped optimizer as usual.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer


def _lora_pairs(model: nn.Module) -> list[tuple[nn.Parameter, nn.Parameter]]:
    """(lora_A weight, lora_B weight) of every LoRA layer whose factors are both trainable matrices."""
    params = dict(model.named_parameters())
    pairs = []
    for name, factor_a in params.items():
        if ".lora_A." not in name:
            continue
        factor_b = params.get(name.replace(".lora_A.", ".lora_B."))
        if factor_b is None or factor_a.ndim != 2 or factor_b.ndim != 2:
            continue
        if factor_a.requires_grad and factor_b.requires_grad:
            pairs.append((factor_a, factor_b))
    return pairs


def _damped_inverse(matrix: torch.Tensor, reg: float) -> torch.Tensor:
    eye = torch.eye(matrix.shape[-1], device=matrix.device, dtype=matrix.dtype)
    return torch.linalg.pinv(matrix + reg * eye)


@torch.no_grad()
def precondition_lora_gradients(pairs: list[tuple[nn.Parameter, nn.Parameter]], reg: float) -> None:
    """Replace the gradients of each (A, B) pair by their preconditioned directions, in place."""
    for factor_a, factor_b in pairs:
        grad_a, grad_b = factor_a.grad, factor_b.grad
        compute_dtype = torch.promote_types(factor_a.dtype, torch.float32)
        a = factor_a.detach().to(compute_dtype)
        b = factor_b.detach().to(compute_dtype)
        if grad_a is not None:
            grad_a.copy_((_damped_inverse(b.T @ b, reg) @ grad_a.to(compute_dtype)).to(grad_a.dtype))
        if grad_b is not None:
            grad_b.copy_((grad_b.to(compute_dtype) @ _damped_inverse(a @ a.T, reg)).to(grad_b.dtype))


def _needs_closure(optimizer_cls: type[Optimizer]) -> bool:
    closure = inspect.signature(optimizer_cls.step).parameters.get("closure")
    return closure is not None and closure.default is inspect.Parameter.empty


def create_riemannian_optimizer(
    model: nn.Module, optimizer_cls: type[Optimizer], *, lr: float, reg: float = 1e-2, **kwargs: Any
) -> Optimizer:
    """An `optimizer_cls` over the model's trainable parameters whose `step` first preconditions the LoRA
    gradients (see the module docstring).

    Args:
        model: a model with LoRA adapters (e.g. a PeftModel).
        optimizer_cls: the optimizer to wrap, e.g. `torch.optim.AdamW`; one whose `step` requires a closure
            (LBFGS) is refused, as it would re-evaluate and overwrite the preconditioned gradients.
        lr: the learning rate.
        reg: damping added to the r x r matrices before they are inverted.
        kwargs: further arguments for `optimizer_cls` (betas, weight_decay, ...).

    Returns:
        An instance of a subclass of `optimizer_cls`; `step(closure)` with a closure raises a ValueError.
    """
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, Optimizer)):
        raise TypeError(f"optimizer_cls must be a subclass of torch.optim.Optimizer, got {optimizer_cls!r}.")
    pairs = _lora_pairs(model)
    if not pairs:
        raise ValueError(
            "create_riemannian_optimizer did not find any trainable lora_A/lora_B parameter pairs on the model. "
            "The Riemannian preconditioner only applies to LoRA-style adapters."
        )
    if _needs_closure(optimizer_cls):
        raise ValueError(
            f"{optimizer_cls.__name__} requires a closure and re-evaluates the objective inside step(); the "
            "Riemannian preconditioner would be overwritten by it. Use an optimizer whose step() has an optional "
            "closure (SGD, AdamW, ...)."
        )

    class RiemannianPreconditionedOptimizer(optimizer_cls):
        @torch.no_grad()
        def step(self, closure: Callable | None = None) -> Any:
            if closure is not None:
                raise ValueError(
                    "The Riemannian-preconditioned optimizer does not support closures: a closure recomputes the "
                    "gradients inside step(), after they were preconditioned. Call loss.backward() before step()."
                )
            precondition_lora_gradients(pairs, reg)
            return super().step()

    trainable = [param for param in model.parameters() if param.requires_grad]
    return RiemannianPreconditionedOptimizer(trainable, lr=lr, **kwargs)
