"""PsoftModel: the PSOFT tuner (`nn.Linear` layers, as in PEFT)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..tuners_utils import BaseTuner
from .config import PsoftConfig
from .layer import Linear, PsoftLayer


class PsoftModel(BaseTuner):
    """Adds PSOFT to `nn.Linear` layers.

    Example:
        >>> from peftkit import PsoftConfig, get_peft_model
        >>> model = get_peft_model(model, PsoftConfig(r=16, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "psoft_"
    tuner_layer_cls = PsoftLayer
    layer_classes = {nn.Linear: Linear}

    def _layer_kwargs(self, config: PsoftConfig, key: str) -> dict[str, Any]:
        return {"config": config}
