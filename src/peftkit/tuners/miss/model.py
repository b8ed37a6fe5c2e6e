"""MissModel: the MiSS tuner (which layers it adapts, with which shard size)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..tuners_utils import BaseTuner
from .config import MissConfig
from .layer import MissLayer, MissLinear


class MissModel(BaseTuner):
    """Adds MiSS (shard sharing) to `nn.Linear` layers.

    Example:
        >>> from peftkit import MissConfig, get_peft_model
        >>> model = get_peft_model(model, MissConfig(r=64, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "miss_"
    tuner_layer_cls = MissLayer
    layer_classes = {nn.Linear: MissLinear}

    def _layer_kwargs(self, config: MissConfig, key: str) -> dict[str, Any]:
        return {"r": config.r, "config": config}
