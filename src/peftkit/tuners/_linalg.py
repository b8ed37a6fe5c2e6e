"""Linear algebra that works in every floating dtype adapters are kept in.

torch's CPU kernels for LU-based operations (`solve`, `inv`) exist for fp32/fp64 only, so half-precision
adapters (fp16, bf16) on the CPU would fail there; these helpers compute in fp32 and return the caller's dtype.
"""

from __future__ import annotations

import torch

_HALF = (torch.float16, torch.bfloat16)


def solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a^-1 b` (batched, as `torch.linalg.solve`), in `b`'s dtype; half precision is solved in fp32."""
    if b.dtype not in _HALF:
        return torch.linalg.solve(a, b)
    return torch.linalg.solve(a.float(), b.float()).to(b.dtype)
