"""HRAModel: the HRA tuner (which layers it adapts)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..tuners_utils import BaseTuner
from .config import HRAConfig
from .layer import HRAConv2d, HRALayer, HRALinear


class HRAModel(BaseTuner):
    """Adds Householder reflection adaptation to `nn.Linear` and `nn.Conv2d` layers.

    Example:
        >>> from peftkit import HRAConfig, get_peft_model
        >>> model = get_peft_model(model, HRAConfig(r=8, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "hra_"
    tuner_layer_cls = HRALayer
    layer_classes = {nn.Linear: HRALinear, nn.Conv2d: HRAConv2d}

    def _layer_kwargs(self, config: HRAConfig, key: str) -> dict[str, Any]:
        return {"r": config.r, "config": config}
