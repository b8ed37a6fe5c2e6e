"""One level of the inverse 2-D discrete wavelet transform, in torch (differentiable, any float dtype).

The four sub-bands (approximation cA and the details cH, cV, cD, each h x w) are upsampled by 2 and
filtered with the separable products of the reconstruction filters, all four in one transposed
convolution:

    X = sum_b  upsample2(c_b) * (f_rows,b  outer  f_cols,b)
        b:  cA -> (lo, lo),  cH -> (hi, lo),  cV -> (lo, hi),  cD -> (hi, hi)

The full result ((2h + L - 2) x (2w + L - 2) for filters of length L) is cropped by (2L - 3) // 2 on every
side, leaving (2h - L + 2) x (2w - L + 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .wavelets import reconstruction_filters


def inverse_dwt2(
    cA: torch.Tensor, cH: torch.Tensor, cV: torch.Tensor, cD: torch.Tensor, family: str
) -> torch.Tensor:
    """The 2-D signal whose one-level wavelet decomposition with `family` is (cA, (cH, cV, cD))."""
    lo, hi = reconstruction_filters(family, cA.dtype, cA.device)
    pairs = ((lo, lo), (hi, lo), (lo, hi), (hi, hi))
    kernels = torch.stack([rows[:, None] * cols[None, :] for rows, cols in pairs]).unsqueeze(
        1
    )  # (4, 1, L, L)
    bands = torch.stack([cA, cH, cV, cD]).unsqueeze(0)  # (1, 4, h, w)
    full = F.conv_transpose2d(bands, kernels, stride=2)[0, 0]
    crop = (2 * lo.shape[0] - 3) // 2
    return full[crop : full.shape[0] - crop, crop : full.shape[1] - crop]
