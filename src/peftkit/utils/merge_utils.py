"""Model-merging arithmetic on stacked "task tensors" (one per adapter, stacked on dim 0).

TIES (Yadav et al., 2023): trim each task tensor to its largest-magnitude entries, elect a sign per
entry, and average only the entries that agree with it. DARE (Yu et al., 2023): drop entries at random
and rescale the survivors by 1/density, then combine linearly or TIES-style.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch


def _stacked(task_tensors: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Task tensors as one tensor stacked on dim 0 (a list, as PEFT takes, or an already stacked tensor)."""
    return task_tensors if torch.is_tensor(task_tensors) else torch.stack(list(task_tensors), dim=0)


def _weighted(task_tensors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    weights = torch.as_tensor(weights, dtype=task_tensors.dtype, device=task_tensors.device)
    return task_tensors * weights.reshape(-1, *[1] * (task_tensors.dim() - 1))


def magnitude_based_pruning(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the `int(density * numel)` entries of largest magnitude, zero the rest."""
    keep = int(density * tensor.numel())
    mask = torch.zeros(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
    top = torch.topk(tensor.abs().reshape(-1), k=keep, largest=True)
    mask[top.indices] = 1
    return tensor * mask.reshape(tensor.shape)


def random_pruning(tensor: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    """Keep each entry with probability `density` (seeded by torch's RNG); optionally rescale by 1/density."""
    mask = torch.bernoulli(torch.full_like(tensor, fill_value=density))
    pruned = tensor * mask
    return pruned / density if rescale else pruned


def prune(
    tensor: torch.Tensor, density: float, method: Literal["magnitude", "random"], rescale: bool = False
) -> torch.Tensor:
    """Zero a fraction `1 - density` of `tensor`'s entries, by magnitude or at random."""
    if density >= 1:
        warnings.warn(f"The density {density} is greater than or equal to 1, no pruning will be performed.")
        return tensor
    if density < 0:
        raise ValueError(f"Density should be >= 0, got {density}")
    if method == "magnitude":
        return magnitude_based_pruning(tensor, density)
    if method == "random":
        return random_pruning(tensor, density, rescale=rescale)
    raise ValueError(f"Unknown pruning method {method!r}; use 'magnitude' or 'random'.")


def calculate_majority_sign_mask(
    tensor: torch.Tensor, method: Literal["total", "frequency"] = "total"
) -> torch.Tensor:
    """Per entry, which task tensors agree with the elected sign (by summed value or by count)."""
    sign = tensor.sign()
    if method == "total":
        sign_magnitude = tensor.sum(dim=0)
    elif method == "frequency":
        sign_magnitude = sign.sum(dim=0)
    else:
        raise RuntimeError(f'Unimplemented mask method "{method}"; use "total" or "frequency".')
    majority_sign = torch.where(sign_magnitude >= 0, 1, -1)
    return sign == majority_sign


def disjoint_merge(task_tensors: torch.Tensor, majority_sign_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the task tensors of the entries that agree with the elected sign."""
    mixed = (task_tensors * majority_sign_mask).sum(dim=0)
    preserved = majority_sign_mask.sum(dim=0)
    return mixed / torch.clamp(preserved, min=1.0)


def task_arithmetic(task_tensors: list[torch.Tensor] | torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`sum_i w_i * t_i`."""
    return _weighted(_stacked(task_tensors), weights).sum(dim=0)


def magnitude_prune(
    task_tensors: list[torch.Tensor] | torch.Tensor, weights: torch.Tensor, density: float
) -> torch.Tensor:
    """Trim each task tensor by magnitude, then `sum_i w_i * t_i`."""
    pruned = torch.stack([prune(t, density, method="magnitude") for t in task_tensors])
    return _weighted(pruned, weights).sum(dim=0)


def ties(
    task_tensors: list[torch.Tensor] | torch.Tensor,
    weights: torch.Tensor,
    density: float,
    majority_sign_method: Literal["total", "frequency"] = "total",
) -> torch.Tensor:
    """TIES merging: trim by magnitude, elect signs, disjoint mean of the weighted tensors."""
    pruned = torch.stack([prune(t, density, method="magnitude") for t in task_tensors])
    mask = calculate_majority_sign_mask(pruned, method=majority_sign_method)
    return disjoint_merge(_weighted(pruned, weights), mask)


def dare_linear(
    task_tensors: list[torch.Tensor] | torch.Tensor, weights: torch.Tensor, density: float
) -> torch.Tensor:
    """DARE: random drop with rescaling, then `sum_i w_i * t_i`."""
    pruned = torch.stack([prune(t, density, method="random", rescale=True) for t in task_tensors])
    return _weighted(pruned, weights).sum(dim=0)


def dare_ties(
    task_tensors: list[torch.Tensor] | torch.Tensor,
    weights: torch.Tensor,
    density: float,
    majority_sign_method: Literal["total", "frequency"] = "total",
) -> torch.Tensor:
    """DARE drop-and-rescale, then TIES sign election and disjoint mean."""
    pruned = torch.stack([prune(t, density, method="random", rescale=True) for t in task_tensors])
    mask = calculate_majority_sign_mask(pruned, method=majority_sign_method)
    return disjoint_merge(_weighted(pruned, weights), mask)


def reshape_weight_task_tensors(task_tensors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`weights` (one per task, or any leading shape) viewed with trailing singleton dims so that it
    broadcasts against `task_tensors`."""
    return weights.view(weights.shape + (1,) * (task_tensors.dim() - weights.dim()))
