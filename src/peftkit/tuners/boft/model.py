"""BOFTModel: the BOFT tuner (which layer kinds it adapts, with which settings)."""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from ...utils.constants import TRANSFORMERS_MODELS_TO_BOFT_TARGET_MODULES_MAPPING
from ...utils.warnings import PeftWarning
from ..tuners_utils import BaseTuner, BaseTunerLayer
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
    target_module_mapping = TRANSFORMERS_MODELS_TO_BOFT_TARGET_MODULES_MAPPING

    def _layer_kwargs(self, config: BOFTConfig, key: str) -> dict[str, Any]:
        return {
            "boft_block_size": config.boft_block_size,
            "boft_block_num": config.boft_block_num,
            "boft_n_butterfly_factor": config.boft_n_butterfly_factor,
            "boft_dropout": config.boft_dropout,
            "init_weights": config.init_weights,
            "fan_in_fan_out": config.fan_in_fan_out,
        }

    def _create_new_module(
        self, config: BOFTConfig, adapter_name: str, target: nn.Module, **kwargs: Any
    ) -> BOFTLayer:
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
        raise TypeError(
            f"Target module {base} is not supported. Currently, only `torch.nn.Linear` and `torch.nn.Conv2d` are "
            "supported by BOFT."
        )
