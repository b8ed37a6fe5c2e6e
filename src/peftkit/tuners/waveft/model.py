"""WaveFTModel: the WaveFT tuner (which layers it adapts, with how many coefficients)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ...utils.other import get_pattern_key
from .._dispatch import CONV1D, base_of
from .._linear_kind import conv1d_type
from .._quantized import weight_shape
from ..tuners_utils import BaseTuner
from .config import WaveFTConfig
from .layer import WaveFTLayer, WaveFTLinear


def _weight_size(module: nn.Module) -> int | None:
    """in * out of a Linear or Conv1D base layer; None for layer kinds WaveFT does not adapt."""
    base = base_of(module)
    if isinstance(base, (nn.Linear, conv1d_type())):
        return weight_shape(base).numel()  # as numbers: a 4-bit weight is stored packed
    return None


def proportional_budget(sizes: dict[str, int], n_frequency: int) -> dict[str, int]:
    """`n_frequency * len(sizes)` coefficients shared out in proportion to each layer's in * out (rounded
    half to even, as Python's round does), at least 1 per layer."""
    if not sizes:
        raise ValueError("No target modules found for proportional parameter allocation.")
    total_size, budget = sum(sizes.values()), n_frequency * len(sizes)
    return {key: max(1, round(size / total_size * budget)) for key, size in sizes.items()}


class WaveFTModel(BaseTuner):
    """Adds WaveFT to `nn.Linear` and transformers' `Conv1D` layers.

    Each layer trains `n_frequency` coefficients (per-module overrides: `n_frequency_pattern`); with
    `proportional_parameters`, the adapter's total `n_frequency * layers` is shared out by layer size.

    Example:
        >>> from peftkit import WaveFTConfig, get_peft_model
        >>> model = get_peft_model(model, WaveFTConfig(n_frequency=1000, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "waveft_"
    tuner_layer_cls = WaveFTLayer
    layer_classes = {nn.Linear: WaveFTLinear, CONV1D: WaveFTLinear}

    def _pre_injection_hook(
        self, model: nn.Module, config: WaveFTConfig, adapter_name: str, matched: list[str]
    ) -> None:
        """With `proportional_parameters`, fix every targeted layer's share before the layers are made."""
        self._proportional_n_frequency: dict[str, int] = {}
        if config.proportional_parameters:
            sizes = {key: _weight_size(model.get_submodule(key)) for key in matched}
            budget = {key: size for key, size in sizes.items() if size is not None}
            self._proportional_n_frequency = proportional_budget(budget, config.n_frequency)

    def _layer_kwargs(self, config: WaveFTConfig, key: str) -> dict[str, Any]:
        n_frequency = self._proportional_n_frequency.get(key)
        if n_frequency is None:
            pattern = get_pattern_key(config.n_frequency_pattern.keys(), key)
            n_frequency = config.n_frequency_pattern.get(pattern, config.n_frequency)
        return {"n_frequency": n_frequency, "config": config}
