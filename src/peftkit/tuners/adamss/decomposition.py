"""How AdaMSS splits a weight into subspaces: a seeded low-rank SVD, k-means on the left singular vectors,
and each subspace's starting projection.

For `W_aug = [W | b]` (out, in + 1; without the bias column when the layer has none):

    W_aug ~ U S V^T                          (torch.svd_lowrank, rank R = min(r, out, in + 1), seeded)
    rows of U clustered into K groups        (k-means, as scikit-learn's; see kmeans.py)
    A_k = Q^T, Q R' = U_k^T P_k              (P_k: the top r_k eigenvectors of U_k U_k^T)

The layer keeps `V^T` (frozen, saved as `adamss_newB`), and trains per subspace A_k (r_k, R) and B_k
(|group k|, r_k). Everything but the seeded SVD draws from torch's global RNG, in PEFT's order.
"""

from __future__ import annotations

import torch

from .kmeans import kmeans_labels

KMEANS_ITERATIONS = 10  # what PEFT asks scikit-learn's KMeans for
KMEANS_SEED = 123456789


def augmented_weight(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`[W | b]` in float32 (out, in + 1), or `W` when there is no bias (`weight`: the layer's weight as
    numbers, dequantized for a quantized layer)."""
    if bias is not None:
        weight = torch.cat((weight, bias.to(weight.dtype).unsqueeze(1)), dim=1)
    return weight.to(torch.float32)


def seeded_svd(matrix: torch.Tensor, r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U (out, R), V^T (R, in)) of `matrix`'s rank-R randomised SVD, R = min(r, *matrix.shape), drawn from a
    generator seeded with `seed` (torch's global RNG state is left as it was)."""
    rank = min(r, *matrix.shape)
    device = matrix.device
    if device.type == "cpu":
        fork = {"devices": []}
    else:
        fork = {"devices": [device], "device_type": device.type}
    with torch.random.fork_rng(**fork):
        torch.manual_seed(seed)
        left, _, right = torch.svd_lowrank(matrix, q=rank, niter=2, M=None)
    return left[:, :rank], right[:, :rank].T


def row_clusters(left: torch.Tensor, num_subspaces: int) -> list[torch.Tensor]:
    """The row indices of each cluster of `left`'s rows (at most `num_subspaces`, as many as rows allow)."""
    n_clusters = min(num_subspaces, left.shape[0])
    labels = torch.from_numpy(
        kmeans_labels(left.detach().cpu().numpy(), n_clusters, KMEANS_ITERATIONS, KMEANS_SEED)
    )
    groups = [torch.where(labels == k)[0] for k in range(n_clusters)]
    empty = [k for k, rows in enumerate(groups) if rows.numel() == 0]
    if empty:
        raise ValueError(
            f"AdaMSS could form only {n_clusters - len(empty)} of {n_clusters} subspaces for a layer of "
            f"{left.shape[0]} outputs (its singular vectors repeat, e.g. equal or zero rows of the weight); "
            "lower num_subspaces or leave this layer out of target_modules."
        )
    return [rows.to(left.device) for rows in groups]


def subspace_rank(block: torch.Tensor, config_rank: int, use_dynamic_rank: bool, svd_threshold: float) -> int:
    """r_k for a subspace whose rows of U are `block`: the configured rank (at most the rows), or with
    `use_dynamic_rank` the number of singular values of `block block^T` above `svd_threshold` times the
    largest (at most the configured rank); at least 1."""
    if not use_dynamic_rank:
        return max(min(block.shape[0], config_rank), 1)
    gram = block @ block.T
    _, singular, _ = torch.svd_lowrank(gram, q=min(gram.shape), niter=2)
    significant = int((singular > svd_threshold * singular[0]).sum().item())
    return max(min(significant, config_rank, singular.numel()), 1)


def subspace_projection(block: torch.Tensor, rank: int) -> torch.Tensor:
    """A_k (rank, R): orthonormal rows spanning `block^T P`, P the top `rank` eigenvectors of `block block^T`."""
    gram = block @ block.T
    eigenvectors, _, _ = torch.svd_lowrank(gram, q=min(gram.shape[0], rank), niter=2)
    q, _ = torch.linalg.qr(block.T @ eigenvectors[:, :rank], mode="reduced")
    return q.T.contiguous()
