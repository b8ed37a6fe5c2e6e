"""DeloraModel: the DeLoRA tuner (which layers it adapts, with which rank and boundary)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ...utils.other import get_pattern_key
from ..tuners_utils import BaseTuner
from .config import DeloraConfig
from .layer import DeloraLayer, DeloraLinear


class DeloraModel(BaseTuner):
    """Adds DeLoRA (decoupled low-rank adaptation) to `nn.Linear` layers.

    Example:
        >>> from peftkit import DeloraConfig, get_peft_model
        >>> model = get_peft_model(model, DeloraConfig(r=8, delora_lambda=15, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "delora_"
    tuner_layer_cls = DeloraLayer
    layer_classes = {nn.Linear: DeloraLinear}

    def _layer_kwargs(self, config: DeloraConfig, key: str) -> dict[str, Any]:
        rank_key = get_pattern_key(config.rank_pattern.keys(), key)
        lambda_key = get_pattern_key(config.lambda_pattern.keys(), key)
        return {
            "r": config.rank_pattern.get(rank_key, config.r),
            "delora_lambda": config.lambda_pattern.get(lambda_key, config.delora_lambda),
            "config": config,
        }
