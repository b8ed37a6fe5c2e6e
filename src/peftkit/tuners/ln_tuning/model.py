"""LNTuningModel: the LN tuning tuner (which modules get a trained copy)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ...utils.constants import TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING
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
    target_module_mapping = TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING

    def _layer_kwargs(self, config: LNTuningConfig, key: str) -> dict[str, Any]:
        return {"config": config}

    def _create_new_module(
        self, peft_config: LNTuningConfig, adapter_name: str, target: nn.Module, **kwargs: Any
    ) -> nn.Module:
        return LNTuningLayer(target, adapter_name, peft_config)
