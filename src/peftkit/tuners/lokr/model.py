"""LoKrModel: the LoKr tuner (which layer kinds it adapts, with which settings)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..lycoris_utils import LycorisTuner, lycoris_layer_kwargs
from .config import LoKrConfig
from .layer import Conv1d, Conv2d, Linear, LoKrLayer


class LoKrModel(LycorisTuner):
    """Adds LoKr adapters to `nn.Linear`, `nn.Conv1d` and `nn.Conv2d` layers.

    Example:
        >>> from peftkit import LoKrConfig, LoKrModel
        >>> lokr_model = LoKrModel(model, LoKrConfig(target_modules=["q_proj", "v_proj"]), "default")
    """

    prefix = "lokr_"
    tuner_layer_cls = LoKrLayer
    layer_classes = {nn.Linear: Linear, nn.Conv1d: Conv1d, nn.Conv2d: Conv2d}

    def _layer_kwargs(self, config: LoKrConfig, key: str) -> dict[str, Any]:
        return {
            **lycoris_layer_kwargs(config, key),
            "rank_dropout_scale": config.rank_dropout_scale,
            "decompose_both": config.decompose_both,
            "decompose_factor": config.decompose_factor,
        }
