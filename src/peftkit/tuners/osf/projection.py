"""The orthogonal gradient projection of OSF, as a step of the forward graph.

The trained factors U_low (out x k) and V_low (k x in) must move only orthogonally to the frozen top
singular subspace (U_high, V_high):

    dU <- dU - U_high U_high^T dU        dV <- dV - dV V_high^T V_high

When a factor's SVD basis is square, the complement of the high subspace is exactly the span of the initial
low factor, and the projection is computed from that smaller basis instead (PEFT stores only what it needs):

    dU <- U0 U0^T dU                     dV <- dV V0^T V0

`project_gradient(t, ...)` is `t` in the forward and applies the projection to the gradient flowing back.
Unlike a hook on the parameter, it survives `copy.deepcopy`, `load_state_dict(assign=True)` and friends;
as long as every use of the factor goes through it (OSF's forward does), the parameter's gradient is the
projected one.
"""

from __future__ import annotations

from typing import Any

import torch


class _ProjectGradient(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, tensor: torch.Tensor, basis: torch.Tensor, keep: bool, on_rows: bool
    ) -> torch.Tensor:
        ctx.save_for_backward(basis)
        ctx.keep, ctx.on_rows = keep, on_rows
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        (basis,) = ctx.saved_tensors
        basis = basis.to(grad.dtype)
        # on_rows: basis (out, k) spans columns of U; else basis (k, in) spans rows of V
        inside = basis @ (basis.T @ grad) if ctx.on_rows else (grad @ basis.T) @ basis
        return (inside if ctx.keep else grad - inside), None, None, None


def project_gradient(tensor: torch.Tensor, basis: torch.Tensor, keep: bool, on_rows: bool) -> torch.Tensor:
    """`tensor`, whose gradient is projected onto span(basis) (`keep=True`) or orthogonally to it
    (`keep=False`); `on_rows`: the basis spans the first dimension (U factors), else the last (V factors)."""
    if not torch.is_grad_enabled() or not tensor.requires_grad:
        return tensor
    return _ProjectGradient.apply(tensor, basis, keep, on_rows)
