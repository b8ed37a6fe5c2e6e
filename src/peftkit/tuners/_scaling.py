"""peft's per-layer scaling helpers (`set_scale`, `scale_layer`, `unscale_layer`) for methods whose layers
keep a `scaling` dict: `scaling[a] = alpha[a] / r[a]` unless rescaled (LoRA, LoHa, LoKr)."""

from __future__ import annotations

import math


def rank_scaling(alpha: float, rank: int, use_rslora: bool = False) -> float:
    """A low-rank adapter's scale: `alpha / r`, or `alpha / sqrt(r)` with rank-stabilised scaling (rsLoRA)."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


class ScalingHelpers:
    scaling: dict[str, float]

    def _default_scaling(self, adapter: str) -> float:
        """`alpha / r` of `adapter`: the scaling before any rescaling."""
        raise NotImplementedError

    def set_scale(self, adapter: str, scale: float) -> None:
        """`scaling = scale * alpha / r` for `adapter` (if this layer holds it)."""
        if adapter in self.scaling:
            self.scaling[adapter] = scale * self._default_scaling(adapter)

    def scale_layer(self, scale: float) -> None:
        """Multiply the scaling of every active adapter by `scale`."""
        for adapter in self.active_adapters:
            if adapter in self.scaling:
                self.scaling[adapter] *= scale

    def unscale_layer(self, scale: float | None = None) -> None:
        """Divide the active adapters' scalings by `scale`, or (None) restore them to `alpha / r`."""
        for adapter in self.active_adapters:
            if adapter in self.scaling:
                if scale is None:
                    self.scaling[adapter] = self._default_scaling(adapter)
                else:
                    self.scaling[adapter] /= scale
