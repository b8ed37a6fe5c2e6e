"""A weight change as LoRA factors of a chosen rank: the truncated SVD, laid out as each layer kind's LoRA
holds its factors.

With `M = U S V^T` the change written as a matrix, the best rank-k approximation (in the Frobenius and
spectral norms) is `(U_k S_k)(V_k^T)`. The LoRA scaling is folded into the factors, so the adapter they
form has `lora_alpha = r` (scaling 1). The rank is an int, or a float `t` in (0, 1]: then each layer
takes the smallest k whose singular values hold at least the fraction `t` of the change's energy
(`sum(S_i^2)`), so layers whose change is simpler get smaller ranks.

Layouts (`M` is the change as the base layer stores its weight, flattened to 2-D):

    Linear      M: (out, in)       B = U_k S_k (out, k)          A = V_k^T (k, in)
    Conv1D      M: (in, out)       A = (U_k S_k)^T (k, in)       B = V_k (out, k)
    Embedding   M: (num, dim)      lora_embedding_A = (U_k S_k)^T (k, num), lora_embedding_B = V_k (dim, k)
    ConvNd      M: (out, in * kernel)  B: (out, k, 1, ...)        A: (k, in, *kernel)

(Conv1D follows peft's split, with the singular values in A, so converted factors equal peft's.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._linear_kind import conv1d_type


def check_rank(rank: int | float) -> None:
    """Raise a ValueError for a rank that is neither a positive int nor a float threshold in (0, 1]."""
    if isinstance(rank, bool) or not isinstance(rank, (int, float)):
        raise ValueError(f"rank must be a positive int or a float threshold in (0, 1], got {rank!r}.")
    if isinstance(rank, float) and not 0 < rank <= 1:
        raise ValueError(
            f"If rank is a float, it is interpreted as a threshold. It must be between 0 and 1 but got {rank}."
        )
    if isinstance(rank, int) and rank < 1:
        raise ValueError(
            f"rank must be at least 1 (got {rank}): a LoRA adapter of rank {rank} holds nothing."
        )


def energy_rank(singular_values: torch.Tensor, threshold: float) -> int:
    """The smallest k whose (sorted) singular values hold at least `threshold` of the total energy."""
    energy = torch.cumsum(singular_values.float() ** 2, dim=0)
    return int(torch.searchsorted(energy, threshold * energy[-1]).item()) + 1


@dataclass
class LoraFactors:
    """One layer's converted adapter: its file-key suffixes and tensors, and its rank."""

    tensors: dict[str, torch.Tensor]  # key suffix (".lora_A.weight", ...) -> tensor
    rank: int


def factorise(base_layer: nn.Module, change: torch.Tensor, rank: int | float, name: str = "") -> LoraFactors:
    """LoRA factors of `change` (the weight change of `base_layer`, in its weight's layout) at `rank`."""
    dtype = change.dtype
    matrix = change.detach().float().flatten(1)
    U, S, Vh = torch.linalg.svd(matrix, full_matrices=False)
    k = rank if isinstance(rank, int) else energy_rank(S, rank)
    if k > S.shape[0]:
        raise ValueError(
            f"The chosen rank {k} is larger than the weight shape ({S.shape[0]}) of {name or 'a layer'}, please "
            "choose a lower rank."
        )
    left = (U[:, :k] * S[:k]).to(dtype)  # (rows of M, k)
    right = Vh[:k].to(dtype)  # (k, columns of M)
    if isinstance(base_layer, nn.Embedding):
        tensors = {".lora_embedding_A": left.T, ".lora_embedding_B": right.T}
    elif isinstance(base_layer, conv1d_type()):
        tensors = {".lora_A.weight": left.T, ".lora_B.weight": right.T}
    elif change.dim() > 2:  # a convolution: A carries the kernel, B is 1x1
        ones = (1,) * (change.dim() - 2)
        tensors = {
            ".lora_A.weight": right.reshape(k, *change.shape[1:]),
            ".lora_B.weight": left.reshape(change.shape[0], k, *ones),
        }
    else:
        tensors = {".lora_A.weight": right, ".lora_B.weight": left}
    return LoraFactors({key: t.contiguous() for key, t in tensors.items()}, k)
