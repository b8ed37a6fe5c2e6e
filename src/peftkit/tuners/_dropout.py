"""Input dropout for adapters (LoRA, AdaLoRA, VeRA, ...), drawn as the positions it drops.

An adapter's dropout masks its layer's whole input, `tokens x in_features` values, for a rank-r product
that costs little: with torch's dropout, drawing the mask (one random draw per value, then a Bernoulli
transform) took as long as the base layer's own matmul. At the usual rates (0.05, 0.1) almost every value
is kept, so this module draws only the dropped ones: the gaps between consecutive dropped positions of a
sequence of independent Bernoulli(p) trials are geometric, `floor(log(U) / log(1 - p)) + 1` for a uniform
U, so about `numel * p` uniforms (from torch's default generator: `torch.manual_seed` governs them) give
the sorted positions, at the rate `p` itself (the uniforms' 31-bit resolution is the only rounding). Kept values are scaled by `1 / (1 - p)`.

Where peftkit's native kernels apply (float32 on an x86 CPU with AVX2, the last dimension a multiple of 8,
a C compiler: `_masked_lowrank`), the mask is drawn there instead, from a counter-based hash seeded from
the same generator, and the LoRA training node applies it inside its rank-r products. Elsewhere the LoRA
node uses the positions without ever forming the masked input: `(x * keep) A^T = x A^T - S A^T`, where S
holds x's values at the dropped positions (sparse), and `AdapterDropout` scales its input and zeroes the
drawn positions. The node and the module draw the same mask for the same seed either way. Inputs on
accelerators (whose dropout is a fused kernel already), `inplace` dropout and rates of 1 use torch's own
dropout.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import _masked_lowrank

_SPREAD = 6.0  # first draw: the expected number of drops plus six standard deviations (rarely short)
_BITS = 31  # each uniform: 31 random bits, two from one 64-bit draw of torch's generator


def _uniforms(count: int) -> torch.Tensor:
    """`count` float64 uniforms on (0, 1] with 31-bit resolution: the two halves of 64-bit draws (torch's
    `random_` fills int64 with 63 random bits; each half masked to 31 bits is uniform). About half the
    cost of `torch.rand(dtype=float64)`, whose serial per-value transform dominates here."""
    words = torch.empty((count + 1) // 2, dtype=torch.int64).random_()
    halves = words.view(torch.int32)[:count].bitwise_and_((1 << _BITS) - 1)
    return halves.to(torch.float64).add_(1.0).mul_(2.0**-_BITS)


def drop_positions(numel: int, p: float) -> torch.Tensor:
    """The sorted flat positions (int64, CPU) that independent Bernoulli(p) trials over `numel` values drop,
    for 0 < p < 1. Exact up to the uniforms' 31-bit resolution: gaps longer than
    `31 log 2 / -log(1 - p)` (a chance of 2^-31 each) are cut to that length."""
    log_keep = math.log1p(-p)
    expected = numel * p
    count = int(expected + _SPREAD * math.sqrt(expected * (1 - p)) + 16)
    chunks, last = [], -1
    while last < numel:
        # U in (0, 1]: each gap `floor(log U / log(1 - p)) + 1` is at least 1
        gaps = _uniforms(count).log_().div_(log_keep).floor_().to(torch.int64).add_(1)
        positions = gaps.cumsum_(0).add_(last)
        chunks.append(positions)
        last = int(positions[-1])
        count = int(0.1 * expected + 64)  # short (a draw below six sigma): continue from the last position
    positions = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
    return positions[: int(torch.searchsorted(positions, numel))]


class AdapterDropout(nn.Dropout):
    """`nn.Dropout` (same `p`, same modes) that draws the dropped positions (see the module docstring).

    In training: `y = x * keep / (1 - p)`, `keep ~ Bernoulli(1 - p)` per element; in eval: `y = x`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if not self.draws_positions(x):
            return super().forward(x)
        if _masked_lowrank.applies(x):
            return _masked_lowrank.dropout(x, self.p)
        out = x.mul(self.keep_scale).contiguous()
        out.view(-1).index_put_((drop_positions(x.numel(), self.p),), out.new_zeros(()))
        return out

    def draws_positions(self, x: torch.Tensor) -> bool:
        """Whether dropout of `x` is drawn here as positions (else torch's dropout runs)."""
        return 0 < self.p < 1 and not self.inplace and x.device.type == "cpu" and x.is_floating_point()

    @property
    def keep_scale(self) -> float:
        """`1 / (1 - p)`: what kept values are multiplied by."""
        return 1.0 / (1.0 - self.p)


def input_dropout(p: float) -> nn.Module:
    """The dropout module an adapter applies to its input: `AdapterDropout(p)`, or `nn.Identity` for 0."""
    return AdapterDropout(p=p) if p > 0.0 else nn.Identity()
