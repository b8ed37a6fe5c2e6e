"""RoAd's pairwise rotations, as elementwise products (the forward) and as a matrix (merging).

Within every group of g outputs, element k pairs with element k + g/2. With per-output coefficients
`c = alpha * cos(theta)` and `s = alpha * sin(theta)` (how theta and alpha map to outputs depends on the
variant), a pair (x1, x2) becomes

    y1 = c[k] x1 - s[k] x2
    y2 = c[k + g/2] x2 + s[k + g/2] x1
"""

from __future__ import annotations

import torch


def coefficients(
    variant: str, group_size: int, theta: torch.Tensor, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c, s): one cosine and one sine coefficient per output.

    road_1: one angle and scale per pair, shared by both elements (out / 2 parameters each);
    road_2: one angle and scale per output (out each);
    road_4: per output, separate angles and scales for c and s (2 * out each, stored per group as
    [the g for c, the g for s]).
    """
    half = group_size // 2
    if variant == "road_1":
        theta = theta.reshape(-1, half).repeat_interleave(2, dim=0).flatten()
        alpha = alpha.reshape(-1, half).repeat_interleave(2, dim=0).flatten()
        return alpha * theta.cos(), alpha * theta.sin()
    if variant == "road_2":
        return alpha * theta.cos(), alpha * theta.sin()
    if variant == "road_4":
        theta, alpha = theta.reshape(-1, 2, group_size), alpha.reshape(-1, 2, group_size)
        cos = alpha[:, 0, :].flatten() * theta[:, 0, :].cos().flatten()
        sin = alpha[:, 1, :].flatten() * theta[:, 1, :].sin().flatten()
        return cos, sin
    raise ValueError(f"Unsupported RoAd variant {variant!r}: choose road_1, road_2 or road_4.")


def rotate(
    x: torch.Tensor, variant: str, group_size: int, theta: torch.Tensor, alpha: torch.Tensor
) -> torch.Tensor:
    """`x` (..., out) with every pair of its last dimension rotated and scaled."""
    cos, sin = coefficients(variant, group_size, theta, alpha)
    halves = x.reshape(-1, 2, group_size // 2)
    partner = torch.stack((-halves[:, 1, :], halves[:, 0, :]), dim=1).reshape(x.shape)
    return x * cos + partner * sin


def rotation_matrix(variant: str, group_size: int, theta: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The (out, out) matrix R with `R @ v == rotate(v)`: c on the diagonal, -s and s where the pairs meet."""
    cos, sin = coefficients(variant, group_size, theta, alpha)
    positions = torch.arange(cos.shape[0], device=cos.device).reshape(-1, 2, group_size // 2)
    first, second = positions[:, 0, :].flatten(), positions[:, 1, :].flatten()
    matrix = torch.diag(cos)
    matrix[first, second] = -sin[first]
    matrix[second, first] = sin[second]
    return matrix
