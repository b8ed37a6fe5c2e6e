"""LoHaModel: the LoHa tuner (which layer kinds it adapts, with which settings)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..lycoris_utils import LycorisTuner, lycoris_layer_kwargs
from .config import LoHaConfig
from .layer import Conv1d, Conv2d, Linear, LoHaLayer


class LoHaModel(LycorisTuner):
    """Adds LoHa adapters to `nn.Linear`, `nn.Conv1d` and `nn.Conv2d` layers.

    Example:
        >>> from peftkit import LoHaConfig, LoHaModel
        >>> loha_model = LoHaModel(model, LoHaConfig(target_modules=["q_proj", "v_proj"]), "default")
    """

    prefix = "hada_"
    tuner_layer_cls = LoHaLayer
    layer_classes = {nn.Linear: Linear, nn.Conv1d: Conv1d, nn.Conv2d: Conv2d}

    def _layer_kwargs(self, config: LoHaConfig, key: str) -> dict[str, Any]:
        # LoHa always rescales the rows kept by rank dropout
        return {**lycoris_layer_kwargs(config, key), "rank_dropout_scale": True}
