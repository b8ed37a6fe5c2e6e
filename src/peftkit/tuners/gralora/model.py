"""GraloraModel: the GraLoRA tuner (which layers it adapts, with which rank)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .._dispatch import CONV1D
from ..tuners_utils import BaseTuner
from .config import GraloraConfig
from .layer import GraloraLayer, Linear


class GraloraModel(BaseTuner):
    """Adds GraLoRA (granular, block-partitioned low-rank adapters) to `nn.Linear` and transformers'
    `Conv1D` layers.

    Example:
        >>> from peftkit import GraloraConfig, get_peft_model
        >>> model = get_peft_model(model, GraloraConfig(r=32, gralora_k=2, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "gralora_"
    tuner_layer_cls = GraloraLayer
    layer_classes = {nn.Linear: Linear, CONV1D: Linear}

    def _layer_kwargs(self, config: GraloraConfig, key: str) -> dict[str, Any]:
        return {"module_name": key, "r": config.r, "config": config}
