"""BeftModel: the BEFT tuner (a trained output bias on `nn.Linear` layers)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..tuners_utils import BaseTuner
from .config import BeftConfig
from .layer import BeftLayer, Linear


class BeftModel(BaseTuner):
    """Adds a trained output bias (BEFT) to `nn.Linear` layers; by default the attention value projections.

    Example:
        >>> from peftkit import BeftConfig, get_peft_model
        >>> model = get_peft_model(model, BeftConfig(target_modules=["v_proj"]))
    """

    prefix = "beft_"
    tuner_layer_cls = BeftLayer
    layer_classes = {nn.Linear: Linear}

    def _layer_kwargs(self, config: BeftConfig, key: str) -> dict[str, Any]:
        return {"config": config}
