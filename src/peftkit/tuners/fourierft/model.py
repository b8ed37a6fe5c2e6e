"""FourierFTModel: the FourierFT tuner (which layers it adapts, with how many coefficients)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ...utils.other import get_pattern_key
from .._dispatch import CONV1D
from ..tuners_utils import BaseTuner
from .config import FourierFTConfig
from .layer import FourierFTLayer, FourierFTLinear


class FourierFTModel(BaseTuner):
    """Adds FourierFT to `nn.Linear` and transformers' `Conv1D` layers.

    Example:
        >>> from peftkit import FourierFTConfig, get_peft_model
        >>> model = get_peft_model(model, FourierFTConfig(n_frequency=1000, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "fourierft_"
    tuner_layer_cls = FourierFTLayer
    layer_classes = {nn.Linear: FourierFTLinear, CONV1D: FourierFTLinear}

    def _layer_kwargs(self, config: FourierFTConfig, key: str) -> dict[str, Any]:
        pattern = get_pattern_key(config.n_frequency_pattern.keys(), key)
        return {"n_frequency": config.n_frequency_pattern.get(pattern, config.n_frequency), "config": config}
