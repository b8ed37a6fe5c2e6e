"""PeanutModel: the PEANuT tuner (`nn.Linear` layers, as in PEFT)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..tuners_utils import BaseTuner
from .config import PeanutConfig
from .layer import Linear, PeanutLayer


class PeanutModel(BaseTuner):
    """Adds PEANuT to `nn.Linear` layers.

    Example:
        >>> from peftkit import PeanutConfig, get_peft_model
        >>> model = get_peft_model(model, PeanutConfig(r=8, depth=1, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "peanut_"
    tuner_layer_cls = PeanutLayer
    layer_classes = {nn.Linear: Linear}

    def _layer_kwargs(self, config: PeanutConfig, key: str) -> dict[str, Any]:
        return {"r": config.r, "config": config}
