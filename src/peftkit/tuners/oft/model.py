"""OFTModel: the OFT tuner (which layer kinds it adapts, with which settings)."""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from ...utils.constants import TRANSFORMERS_MODELS_TO_OFT_TARGET_MODULES_MAPPING
from ...utils.warnings import PeftWarning
from ..tuners_utils import BaseTuner, BaseTunerLayer
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
    target_module_mapping = TRANSFORMERS_MODELS_TO_OFT_TARGET_MODULES_MAPPING

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

    def _create_new_module(
        self, config: OFTConfig, adapter_name: str, target: nn.Module, **kwargs: Any
    ) -> OFTLayer:
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if isinstance(base, nn.Linear):
            if kwargs["fan_in_fan_out"]:
                warnings.warn(
                    "fan_in_fan_out is set to True but the target module is `torch.nn.Linear`. "
                    "Setting fan_in_fan_out to False.",
                    PeftWarning,
                )
                kwargs["fan_in_fan_out"] = config.fan_in_fan_out = False
            return Linear(target, adapter_name, **kwargs)
        if isinstance(base, nn.Conv2d):
            return Conv2d(target, adapter_name, **kwargs)
        if isinstance(base, nn.Embedding):
            return Embedding(target, adapter_name, **kwargs)
        raise TypeError(
            f"Target module {base} is not supported. Currently, only `torch.nn.Linear`, `torch.nn.Conv2d` and "
            "`torch.nn.Embedding` are supported by OFT."
        )
