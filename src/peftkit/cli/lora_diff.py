"""Comparing two LoRA adapters module by module, from their factors alone.

The deltas `dW = s * B @ A` are never formed: with `P = B1^T B2` (r1 x r2) and `Q = A1 A2^T` (r1 x r2),
the Frobenius inner product is `<dW1, dW2> = s1 * s2 * sum(P * Q)`, and a norm is the inner product of a
delta with itself, so the cost is that of the factors (in float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..persistence.lora_factors import LoraFactors, natural_order


@dataclass
class ModuleDiff:
    """How two adapters' deltas of one module compare."""

    module: str
    rank_a: int
    rank_b: int
    norm_a: float  # Frobenius norm of the first adapter's delta
    norm_b: float
    norm_diff: float  # Frobenius norm of delta_a - delta_b
    cosine: float | None  # cosine of the two deltas (None when one is zero)


def _inner(x: LoraFactors, y: LoraFactors) -> float:
    b_x, b_y = x.lora_b.double(), y.lora_b.double()
    a_x, a_y = x.lora_a.double(), y.lora_a.double()
    return x.scale * y.scale * float(((b_x.T @ b_y) * (a_x @ a_y.T)).sum())


def compare_modules(x: LoraFactors, y: LoraFactors) -> ModuleDiff:
    """The norms, difference norm and cosine of the two deltas of one module."""
    if (x.lora_b.shape[0], x.lora_a.shape[1]) != (y.lora_b.shape[0], y.lora_a.shape[1]):
        raise ValueError(
            f"{x.module}: the adapters change weights of different shapes "
            f"({x.lora_b.shape[0]}x{x.lora_a.shape[1]} and {y.lora_b.shape[0]}x{y.lora_a.shape[1]}): "
            "they were made for different base models."
        )
    xx, yy, xy = _inner(x, x), _inner(y, y), _inner(x, y)
    norm_x, norm_y = math.sqrt(max(xx, 0.0)), math.sqrt(max(yy, 0.0))
    cosine = xy / (norm_x * norm_y) if norm_x > 0 and norm_y > 0 else None
    return ModuleDiff(
        module=x.module,
        rank_a=x.rank,
        rank_b=y.rank,
        norm_a=norm_x,
        norm_b=norm_y,
        norm_diff=math.sqrt(max(xx + yy - 2 * xy, 0.0)),
        cosine=None if cosine is None else max(-1.0, min(1.0, cosine)),
    )


@dataclass
class AdapterDiff:
    """The comparison of two adapters: per shared module, and the modules only one adapts."""

    modules: list[ModuleDiff]
    only_a: list[str]
    only_b: list[str]

    @property
    def overall_cosine(self) -> float | None:
        """The cosine of the two adapters' deltas taken together (all shared modules as one vector)."""
        dot = sum(m.cosine * m.norm_a * m.norm_b for m in self.modules if m.cosine is not None)
        norm_a = math.sqrt(sum(m.norm_a**2 for m in self.modules))
        norm_b = math.sqrt(sum(m.norm_b**2 for m in self.modules))
        return dot / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else None


def compare_adapters(a: list[LoraFactors], b: list[LoraFactors]) -> AdapterDiff:
    """Compare two adapters' factors module by module (matched by module name)."""
    by_name_b = {m.module: m for m in b}
    names_a = {m.module for m in a}
    shared = [compare_modules(m, by_name_b[m.module]) for m in a if m.module in by_name_b]
    return AdapterDiff(
        modules=sorted(shared, key=lambda d: natural_order(d.module)),
        only_a=sorted(names_a - set(by_name_b), key=natural_order),
        only_b=sorted(set(by_name_b) - names_a, key=natural_order),
    )
