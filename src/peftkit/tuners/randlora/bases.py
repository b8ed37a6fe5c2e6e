"""RandLoRA's shared random bases, drawn as peft draws them (same key, same numbers, bit for bit).

For an adapter whose largest targeted layer is (out_max x in_max), with D = max and d = min of the two
and n = ceil(d / r) bases:

    A: (r, 1, d)      one rank-r basis on the smaller side (shared by all n: gamma makes them differ)
    B: (D, n, r)      n rank-r bases on the larger side

Dense bases (the default) are Kaiming-uniform (a = sqrt(5)) in half precision (bf16 where the machine
has it), A first, then B one basis at a time, each divided by its standard deviation. Sparse bases are
ternary: U(0, 1) draws (A, then B) below 1/(2s) become -1, above 1 - 1/(2s) become 1, the rest 0, again
divided by the standard deviation; `sparse` uses s = 3, `very_sparse` s = sqrt(d).
"""

from __future__ import annotations

import math

import torch

from .config import RandLoraConfig


def num_bases(min_dim: int, r: int) -> int:
    """How many rank-r bases make a full-rank update of a layer whose smaller side is `min_dim`."""
    return -(-min_dim // r)


def _half_dtype() -> torch.dtype:
    """bf16 unless the accelerator in use lacks it (then fp16), as peft picks it."""
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def _kaiming(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    tensor = torch.empty(shape, dtype=_half_dtype(), device="cpu")
    with torch.no_grad():
        return torch.nn.init.kaiming_uniform_(tensor, a=math.sqrt(5), generator=generator)


def _ternary(uniform: torch.Tensor, sparsity: float) -> torch.Tensor:
    values = torch.zeros(uniform.shape, device="cpu")
    values[uniform < 1 / (2 * sparsity)] = -1
    values[uniform > 1 - 1 / (2 * sparsity)] = 1
    return values


def draw_bases(config: RandLoraConfig, max_dim: int, min_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of the module docstring, from a CPU generator seeded with `projection_prng_key`."""
    generator = torch.Generator(device="cpu").manual_seed(config.projection_prng_key)
    r, count = config.r, num_bases(min_dim, config.r)
    if config.very_sparse or config.sparse:
        sparsity = math.sqrt(min_dim) if config.very_sparse else 3
        basis_a = _ternary(torch.rand((r, 1, min_dim), generator=generator, device="cpu"), sparsity)
        basis_b = _ternary(torch.rand((max_dim, count, r), generator=generator, device="cpu"), sparsity)
    else:
        basis_a = _kaiming((r, 1, min_dim), generator)
        basis_b = torch.cat([_kaiming((max_dim, 1, r), generator) for _ in range(count)], dim=1)
    return basis_a / basis_a.std(), basis_b / basis_b.std()
