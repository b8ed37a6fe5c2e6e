"""Input dropout for adapters (LoRA, AdaLoRA, VeRA), with masks four times cheaper to draw on CPU.

An adapter's dropout masks its layer's whole input, `tokens x in_features` values, for a rank-r product
that costs little: with torch's dropout, drawing the mask (one 32-bit draw per value, then a Bernoulli
transform) took as long as the base layer's own matmul. Here each value gets a 15-bit uniform level,
four levels from one 64-bit draw of torch's default generator (so `torch.manual_seed` still governs it),
and is kept when its level is at or above `round(p * 2**15)`.

So on CPU the drop probability is `q = round(p * 2**15) / 2**15` (0.05 -> 0.0499878), and kept values
are scaled by `1 / (1 - q)`, keeping the expectation exact. Rates that this rounding would change by more
than 0.1% (below about 0.003), and inputs on accelerators (whose dropout is a fused kernel already), use
torch's own dropout.
"""

from __future__ import annotations

import torch
from torch import nn

_LEVELS = 1 << 15  # 15-bit levels: the four int16 parts of a 63-bit draw, with the sign bit masked off
_MAX_RELATIVE_ROUNDING = 1e-3


def drop_level(p: float) -> int | None:
    """`round(p * 2**15)`, or None when that would move the drop rate by more than 0.1%."""
    level = round(p * _LEVELS)
    if not 0 < level < _LEVELS or abs(level / _LEVELS - p) > _MAX_RELATIVE_ROUNDING * p:
        return None
    return level


def keep_mask(numel: int, level: int) -> torch.Tensor:
    """`numel` int16 values, 1 with probability `1 - level / 2**15` and 0 otherwise, independently."""
    words = torch.empty((numel + 3) // 4, dtype=torch.int64).random_()  # 63 uniform bits each
    levels = words.view(torch.int16)[:numel].bitwise_and_(_LEVELS - 1)  # four uniform levels in [0, 2**15)
    # level - threshold is negative exactly when the value is dropped; its sign (arithmetic shift) is -1
    return levels.sub_(level).bitwise_right_shift_(15).add_(1)


class AdapterDropout(nn.Dropout):
    """`nn.Dropout` (same `p`, same modes) with the cheaper CPU mask described in the module docstring.

    In training: `y = x * keep / (1 - q)`, `keep ~ Bernoulli(1 - q)` per element; in eval: `y = x`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = self.cheap_mask(x)
        if mask is None:
            return super().forward(x)
        keep, scale = mask
        return (x * keep).mul_(scale)

    def cheap_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, float] | None:
        """`(keep, scale)` for input `x` (int16 0/1 in `x`'s shape, and `1 / (1 - q)`), drawing the mask;
        None where torch's dropout is used instead (other rates, accelerators, `inplace`)."""
        level = drop_level(self.p)
        if level is None or self.inplace or x.device.type != "cpu" or not x.is_floating_point():
            return None
        return keep_mask(x.numel(), level).view(x.shape), _LEVELS / (_LEVELS - level)


def input_dropout(p: float) -> nn.Module:
    """The dropout module an adapter applies to its input: `AdapterDropout(p)`, or `nn.Identity` for 0."""
    return AdapterDropout(p=p) if p > 0.0 else nn.Identity()
