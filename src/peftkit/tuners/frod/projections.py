"""FRoD's shared tensors, as plain functions: the role of a layer, its block index, the basis V that
the layers of one role share, the positions of the trained entries of S, and a layer's U and lambda.

For the layers W_1..W_n (out_i x in) of one role, V (in x in) comes from their stack [W_1; ..; W_n]:
- fewer rows than columns: V = the right singular vectors (full SVD);
- otherwise, with the thin QR [W_1; ..; W_n] = Q R split into the row blocks Q_i of each layer,
  T = mean_i (Q_i^T Q_i + alpha I)^-1 and T's eigenvectors E (ascending eigenvalues): V = R^T E.
A layer then writes W = U diag(lambda) V^T: with C = W V^-T, lambda are C's column norms and U = C with
unit columns. Computed in the same operations as peft, so the numbers are the same.
"""

from __future__ import annotations

import torch


def category_of(key: str) -> str:
    """The role that decides which layers share a basis, from a module name's last two parts:
    `model.layers.0.self_attn.q_proj` -> `self_attn_q_proj`, `h.3.c_attn` -> `c_attn`, and BERT's
    `attention.output.dense` -> `attention_output` (not to be confused with the MLP's `output.dense`)."""
    parts = key.split(".")
    if len(parts) == 1:
        return parts[0]
    if parts[-2].isdigit():
        return parts[-1]
    if parts[-2:] == ["output", "dense"] and len(parts) >= 3 and parts[-3] == "attention":
        return "attention_output"
    return f"{parts[-2]}_{parts[-1]}"


def layer_index_of(key: str, fallback: int) -> int:
    """The block a module belongs to: the number after `layers.`, else the first number in its name,
    else `fallback` (its position among the adapted modules)."""
    parts = key.split(".")
    if "layers" in parts:
        position = parts.index("layers") + 1
        if position < len(parts) and parts[position].isdigit():
            return int(parts[position])
    return next((int(part) for part in parts if part.isdigit()), fallback)


def shared_basis(matrices: list[torch.Tensor], regularization_alpha: float) -> torch.Tensor:
    """V (in x in) for the (out_i x in) weights `matrices` of one role, in their dtype (fp32 expected)."""
    stacked = torch.cat(matrices, dim=0)
    if stacked.shape[0] < stacked.shape[1]:
        return torch.linalg.svd(stacked, full_matrices=True)[2].T
    q_matrix, r_matrix = torch.linalg.qr(stacked)
    size = r_matrix.shape[1]
    ridge = regularization_alpha * torch.eye(size, dtype=r_matrix.dtype)
    mean_inverse = torch.zeros((size, size), dtype=r_matrix.dtype)
    for block in torch.split(q_matrix, [m.shape[0] for m in matrices]):
        mean_inverse += torch.linalg.inv(block.T @ block + ridge)
    mean_inverse /= len(matrices)
    return r_matrix.T @ torch.linalg.eigh(mean_inverse)[1]


def sparse_pattern(size: int, sparse_rate: float, generator: torch.Generator) -> torch.Tensor:
    """(2, k) row/column positions of S's trained entries: k = int(size^2 * rate) (at least one when the
    rate is positive) off-diagonal positions, the first k of a random permutation of all of them in
    row-major order (drawn from `generator` only when k > 0)."""
    count = size * (size - 1)  # off-diagonal positions
    wanted = min(int(size * size * sparse_rate), count)
    if sparse_rate > 0 and count > 0:
        wanted = max(1, wanted)
    if wanted == 0:
        return torch.empty(2, 0, dtype=torch.long)
    flat = torch.randperm(count, generator=generator, device="cpu")[:wanted]
    rows = flat // (size - 1)
    cols = flat % (size - 1)
    cols += cols >= rows  # skip the diagonal position of each row
    return torch.stack([rows, cols])


def decompose(weight: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, lambda), fp32, with `weight` (out x in) = U diag(lambda) basis^T; computed in fp64 on the CPU."""
    w = weight.detach().to(torch.float64).cpu()
    v = basis.detach().to(torch.float64).cpu()
    try:
        coefficients = torch.linalg.solve(v, w.T).T
    except RuntimeError:  # a singular basis: the least-squares coefficients
        coefficients = w @ torch.linalg.pinv(v, rtol=1e-6).T
    norms = torch.linalg.norm(coefficients, dim=0)
    unit = torch.zeros_like(coefficients)
    kept = norms > 1e-12
    unit[:, kept] = coefficients[:, kept] / norms[kept]
    return unit.float(), norms.float()
