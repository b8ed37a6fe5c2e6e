"""OFTModel: the OFT tuner (which layer kinds it adapts, with which settings)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..tuners_utils import BaseTuner
from .config import OFTConfig
from .layer import Conv2d, Embedding, Linear, OFTLayer


class OFTModel(BaseTuner):
    """Adds OFT rotations to `nn.Linear`, `nn.Conv2d` and `nn.Embedding` layers.

    Example:
        >>> from peftkit import OFTConfig, OFTModel
        >>> oft_model = OFTModel(model, OFTConfig(target_modules=["q_proj", "v_proj"], oft_block_size=32), "default")
    """

    prefix = "oft_"
    tuner_layer_cls = OFTLayer
    layer_classes = {nn.Linear: Linear, nn.Conv2d: Conv2d, nn.Embedding: Embedding}

    def _layer_kwargs(self, config: OFTConfig, key: str) -> dict[str, Any]:
        return {
            "r": config.r,
            "oft_block_size": config.oft_block_size,
            "module_dropout": config.module_dropout,
            "coft": config.coft,
            "eps": config.eps,
            "block_share": config.block_share,
            "use_cayley_neumann": config.use_cayley_neumann,
            "num_cayley_neumann_terms": config.num_cayley_neumann_terms,
            "init_weights": config.init_weights,
            "fan_in_fan_out": config.fan_in_fan_out,
        }
