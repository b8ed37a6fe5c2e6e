"""BOFTModel: the BOFT tuner (which layer kinds it adapts, with which settings)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..tuners_utils import BaseTuner
from .config import BOFTConfig
from .layer import BOFTLayer, Conv2d, Linear


class BOFTModel(BaseTuner):
    """Adds BOFT rotations and scales to `nn.Linear` and `nn.Conv2d` layers.

    Example:
        >>> from peftkit import BOFTConfig, BOFTModel
        >>> boft_model = BOFTModel(model, BOFTConfig(target_modules=["q_proj", "v_proj"], boft_block_size=4), "default")
    """

    prefix = "boft_"
    tuner_layer_cls = BOFTLayer
    layer_classes = {nn.Linear: Linear, nn.Conv2d: Conv2d}

    def _layer_kwargs(self, config: BOFTConfig, key: str) -> dict[str, Any]:
        return {
            "boft_block_size": config.boft_block_size,
            "boft_block_num": config.boft_block_num,
            "boft_n_butterfly_factor": config.boft_n_butterfly_factor,
            "boft_dropout": config.boft_dropout,
            "init_weights": config.init_weights,
            "fan_in_fan_out": config.fan_in_fan_out,
        }
