"""OSF's SVD split of a weight, and the gradient projection as a step to call between `backward()` and
`optimizer.step()` (the layers project through their forward instead, see `projection.py`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["decompose_weight_matrix", "project_gradient_to_orthogonal_space"]


def decompose_weight_matrix(weight: torch.Tensor, top_k: int) -> dict[str, Any]:
    """The SVD of `weight` (computed in fp32) split after the top `top_k` directions, in the weight's dtype:
    the frozen `U_high` (out x k), `S_high`, `V_high` (k x in), the trainable `U_low`, `S_low`, `V_low` (as
    parameters) and `rank_high` (k, at most min(weight.shape))."""
    U, S, Vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    k = min(top_k, S.shape[0])

    def part(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.contiguous().to(device=weight.device, dtype=weight.dtype)

    return {
        "U_high": part(U[:, :k]),
        "S_high": part(S[:k]),
        "V_high": part(Vh[:k, :]),
        "U_low": nn.Parameter(part(U[:, k:])),
        "S_low": nn.Parameter(part(S[k:])),
        "V_low": nn.Parameter(part(Vh[k:, :])),
        "rank_high": k,
    }


@torch.no_grad()
def project_gradient_to_orthogonal_space(svd_dict: dict[str, Any]) -> None:
    """In place, the gradients of `svd_dict`'s U_low and V_low made orthogonal to its U_high / V_high:
    `dU -= U_high U_high^T dU`, `dV -= dV V_high^T V_high` (one process; no sharded tensors)."""
    U_grad, V_grad = svd_dict["U_low"].grad, svd_dict["V_low"].grad
    if U_grad is not None:
        U_high = svd_dict["U_high"].to(U_grad.dtype)
        U_grad.sub_(U_high @ (U_high.T @ U_grad))
    if V_grad is not None:
        V_high = svd_dict["V_high"].to(V_grad.dtype)
        V_grad.sub_((V_grad @ V_high.T) @ V_high)
