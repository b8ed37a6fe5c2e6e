"""LNTuningModel: the LN tuning tuner (which modules get a trained copy)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..tuners_utils import BaseTuner
from .config import LNTuningConfig
from .layer import LNTuningLayer


class LNTuningModel(BaseTuner):
    """Gives each targeted module (by default the normalisation layers) a trainable copy per adapter.

    Example:
        >>> from peftkit import LNTuningConfig, get_peft_model
        >>> model = get_peft_model(model, LNTuningConfig(task_type="CAUSAL_LM"))
    """

    prefix = "ln_tuning_"
    tuner_layer_cls = LNTuningLayer
    layer_classes = {nn.Module: LNTuningLayer}  # any module: its copy is trained in full

    def _layer_kwargs(self, config: LNTuningConfig, key: str) -> dict[str, Any]:
        return {"config": config}
