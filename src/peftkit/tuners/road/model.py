"""RoadModel: the RoAd tuner (which layers it rotates the outputs of)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..tuners_utils import BaseTuner
from .bnb import dispatch_bnb
from .config import RoadConfig
from .layer import Linear, RoadLayer


class RoadModel(BaseTuner):
    """Adds RoAd to `nn.Linear` layers and bitsandbytes' `Linear4bit` / `Linear8bitLt`.

    Example:
        >>> from peftkit import RoadConfig, get_peft_model
        >>> model = get_peft_model(model, RoadConfig(variant="road_2", group_size=64, target_modules=["q_proj"]))
    """

    prefix = "road_"
    tuner_layer_cls = RoadLayer
    layer_classes = {nn.Linear: Linear}
    layer_dispatchers = (dispatch_bnb,)

    def _layer_kwargs(self, config: RoadConfig, key: str) -> dict[str, Any]:
        return {"config": config}
