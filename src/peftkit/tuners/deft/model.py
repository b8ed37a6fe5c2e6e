"""DeftModel: the DEFT tuner (which layers it adapts, with which rank)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .._dispatch import CONV1D
from ..tuners_utils import BaseTuner
from .config import DeftConfig
from .layer import DeftLayer, DeftLinear


class DeftModel(BaseTuner):
    """Adds DEFT to `nn.Linear` and transformers' `Conv1D` layers: each adapted weight becomes
    `(I - P_proj) W + Q_P (s R)` (see `DeftConfig`).

    Example:
        >>> from peftkit import DeftConfig, get_peft_model
        >>> model = get_peft_model(model, DeftConfig(r=8, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "deft_"
    tuner_layer_cls = DeftLayer
    layer_classes = {nn.Linear: DeftLinear, CONV1D: DeftLinear}

    def _layer_kwargs(self, config: DeftConfig, key: str) -> dict[str, Any]:
        return {"r": config.r, "config": config}
