"""Adapter arithmetic: a new LoRA adapter made from a weighted combination of existing ones.

With adapters i of weights w_i and scalings s_i (the new adapter gets lora_alpha = r, scaling 1):
- "linear" (same ranks): A = sum_i c_i A_i and B = sum_i c_i B_i with c_i = sqrt(w_i s_i);
  "ties", "dare_linear", "dare_ties", "magnitude_prune" combine the A's and B's the same way through
  the corresponding `merge_utils` function (coefficients c_i).
- "cat": the ranks are concatenated, A = [w_1 s_1 A_1; w_2 s_2 A_2; ...], B = [B_1, B_2, ...]; the delta
  is then exactly sum_i w_i s_i B_i A_i.
- "svd" and the "*_svd" types: the deltas D_i = s_i B_i A_i are combined (weighted sum, TIES, DARE or
  magnitude pruning), then factorised by SVD: B = U_r diag(S_r), A = Vh_r (optionally clamped to the
  `svd_clamp` quantile of their entries).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from ...utils import merge_utils
from .layer import LoraLayer

SVD_TYPES = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
FACTOR_TYPES = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
COMBINATION_TYPES = ("cat", *FACTOR_TYPES, *SVD_TYPES)
_NEEDS_DENSITY = ("ties", "dare_linear", "dare_ties", "magnitude_prune")


def _combine(kind: str, tensors: list[torch.Tensor], weights: list[float], density, majority_sign_method):
    """Combine stacked tensors with the merge rule `kind` ("linear", "ties", ...)."""
    stacked = torch.stack(tensors)
    weight_tensor = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device)
    if kind in ("linear", "svd"):
        return merge_utils.task_arithmetic(stacked, weight_tensor)
    if kind == "magnitude_prune":
        return merge_utils.magnitude_prune(stacked, weight_tensor, density)
    if kind == "dare_linear":
        return merge_utils.dare_linear(stacked, weight_tensor, density)
    if kind == "ties":
        return merge_utils.ties(stacked, weight_tensor, density, majority_sign_method)
    return merge_utils.dare_ties(stacked, weight_tensor, density, majority_sign_method)


def _new_rank_and_targets(model, adapters: list[str], combination_type: str, svd_rank: int | None):
    configs = [model.peft_config[a] for a in adapters]
    ranks = [c.r for c in configs]
    if combination_type == "cat":
        rank = sum(ranks)
    elif combination_type in SVD_TYPES:
        rank = svd_rank or max(ranks)
    else:
        if len(set(ranks)) != 1:
            raise ValueError(
                f"All adapters must have the same r value when using combination_type={combination_type!r} "
                f"(got ranks {dict(zip(adapters, ranks))}); use 'cat' or an SVD type for different ranks."
            )
        rank = ranks[0]
    targets = [c.target_modules for c in configs]
    if all(isinstance(t, str) for t in targets):
        new_targets: Any = "|".join(f"({t})" for t in targets)
    elif not any(isinstance(t, str) for t in targets):
        new_targets = set().union(*targets)
    else:
        raise TypeError(
            "Cannot combine adapters whose target_modules are a regex string for some and a list for others."
        )
    return rank, new_targets


def _validate(model, adapters, weights, adapter_name, combination_type, density) -> None:
    if combination_type not in COMBINATION_TYPES:
        raise ValueError(f"Invalid combination_type {combination_type!r}; choose one of {COMBINATION_TYPES}.")
    missing = [a for a in adapters if a not in model.peft_config]
    if missing:
        raise ValueError(f"Adapter(s) {missing} do not exist; available: {sorted(model.peft_config)}.")
    if len(adapters) != len(weights) or not adapters:
        raise ValueError(
            f"Got {len(adapters)} adapters and {len(weights)} weights; give one weight per adapter."
        )
    if adapter_name in model.peft_config:
        raise ValueError(
            f"An adapter named {adapter_name!r} already exists; choose another name or delete it first."
        )
    unsupported = [a for a in adapters if model.peft_config[a].use_dora or model.peft_config[a].lora_bias]
    if unsupported:
        raise ValueError(f"add_weighted_adapter does not support DoRA or lora_bias adapters: {unsupported}.")
    if any(model.peft_config[a].modules_to_save for a in adapters):
        raise ValueError("add_weighted_adapter cannot combine adapters that have modules_to_save.")
    base_type = combination_type.removesuffix("_svd")
    if base_type in _NEEDS_DENSITY and (density is None or not 0 <= density <= 1):
        raise ValueError(f"combination_type={combination_type!r} needs a density in [0, 1], got {density!r}.")


def add_weighted_adapter(
    model,
    adapters: list[str],
    weights: list[float],
    adapter_name: str,
    combination_type: str = "svd",
    svd_rank: int | None = None,
    svd_clamp: float | None = None,
    svd_full_matrices: bool = True,
    svd_driver: str | None = None,
    density: float | None = None,
    majority_sign_method: str = "total",
) -> None:
    """Create adapter `adapter_name` from `adapters` combined with `weights` (see the module docstring)."""
    _validate(model, adapters, weights, adapter_name, combination_type, density)
    rank, targets = _new_rank_and_targets(model, adapters, combination_type, svd_rank)
    first = model.peft_config[adapters[0]]
    model.peft_config[adapter_name] = replace(
        first,
        r=rank,
        lora_alpha=rank,
        target_modules=targets,
        rank_pattern={},
        alpha_pattern={},
        init_lora_weights=True,
    )
    model.inject_adapter(model.model, adapter_name)
    with torch.no_grad():
        for layer in model.model.modules():
            if isinstance(layer, LoraLayer) and layer.has_adapter(adapter_name):
                present = [(a, w) for a, w in zip(adapters, weights) if layer.has_adapter(a)]
                if present:
                    _fill_layer(
                        layer,
                        adapter_name,
                        present,
                        combination_type,
                        rank,
                        density,
                        majority_sign_method,
                        svd_clamp,
                        svd_full_matrices,
                        svd_driver,
                    )


def _factors(layer, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of adapter `name` as (r, in) and (out, r) matrices (conv kernels flattened)."""
    if name in layer.lora_A:
        return layer.lora_A[name].weight, layer.lora_B[name].weight
    return layer.lora_embedding_A[name], layer.lora_embedding_B[name]


def _fill_layer(
    layer, target, present, combination_type, rank, density, sign_method, clamp, full, driver
) -> None:
    target_A, target_B = _factors(layer, target)
    names = [a for a, _ in present]
    if combination_type == "cat":
        parts_A = [w * layer.scaling[a] * _factors(layer, a)[0] for a, w in present]
        parts_B = [_factors(layer, a)[1] for a, _ in present]
        used = sum(p.shape[0] for p in parts_A)
        target_A.zero_()
        target_B.zero_()
        target_A[:used] = torch.cat(parts_A, dim=0)
        target_B[:, :used] = torch.cat(parts_B, dim=1)
        return
    if combination_type in FACTOR_TYPES:
        coefficients = [math.sqrt(w * layer.scaling[a]) for a, w in present]
        target_A.copy_(
            _combine(
                combination_type, [_factors(layer, a)[0] for a in names], coefficients, density, sign_method
            )
        )
        target_B.copy_(
            _combine(
                combination_type, [_factors(layer, a)[1] for a in names], coefficients, density, sign_method
            )
        )
        return
    deltas = [_delta_out_in(layer, a) for a in names]
    delta = _combine(
        combination_type.removesuffix("_svd"), deltas, [w for _, w in present], density, sign_method
    )
    out_features = target_B.shape[0]
    U, S, Vh = torch.linalg.svd(delta.reshape(out_features, -1), full_matrices=full, driver=driver)
    U = U[:, :rank] @ torch.diag(S[:rank])
    Vh = Vh[:rank, :]
    if clamp is not None:
        bound = torch.quantile(torch.cat([U.flatten(), Vh.flatten()]), clamp)
        U, Vh = U.clamp(-bound, bound), Vh.clamp(-bound, bound)
    # a delta of lower rank than asked for fills only the first columns/rows (the rest stay zero)
    kept = min(U.shape[1], Vh.shape[0])
    target_B.zero_()
    target_A.zero_()
    target_B.reshape(out_features, -1)[:, :kept] = U[:, :kept]
    target_A.reshape(target_A.shape[0], -1)[:kept] = Vh[:kept]


def _delta_out_in(layer, name: str) -> torch.Tensor:
    """The adapter's delta with output channels first (undoing Conv1D / embedding transposition)."""
    return layer._weight_out_in(layer.get_delta_weight(name))
