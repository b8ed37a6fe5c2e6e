"""C3AModel: the C3A tuner (which layers it adapts, with which block size)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ...utils.other import get_pattern_key
from ..tuners_utils import BaseTuner
from .config import C3AConfig
from .layer import C3ALayer, C3ALinear


class C3AModel(BaseTuner):
    """Adds C3A (circular convolution adaptation) to `nn.Linear` layers.

    Example:
        >>> from peftkit import C3AConfig, get_peft_model
        >>> model = get_peft_model(model, C3AConfig(block_size=64, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "c3a_"
    tuner_layer_cls = C3ALayer
    layer_classes = {nn.Linear: C3ALinear}

    def _layer_kwargs(self, config: C3AConfig, key: str) -> dict[str, Any]:
        patterns = config.block_size_pattern or {}
        pattern = get_pattern_key(patterns.keys(), key)
        return {"block_size": patterns.get(pattern, config.block_size), "config": config}
