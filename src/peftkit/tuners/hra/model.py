"""HRAModel: the HRA tuner (which layers it adapts)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ...utils.constants import TRANSFORMERS_MODELS_TO_HRA_TARGET_MODULES_MAPPING
from ..tuners_utils import BaseTuner
from .config import HRAConfig
from .layer import HRAConv2d, HRALayer, HRALinear


class HRAModel(BaseTuner):
    """Adds Householder reflection adaptation to `nn.Linear` and `nn.Conv2d` layers.

    Example:
        >>> from peftkit import HRAConfig, get_peft_model
        >>> model = get_peft_model(model, HRAConfig(r=8, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "hra_"
    tuner_layer_cls = HRALayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_HRA_TARGET_MODULES_MAPPING

    def _layer_kwargs(self, config: HRAConfig, key: str) -> dict[str, Any]:
        return {"r": config.r, "config": config}

    def _create_new_module(
        self, hra_config: HRAConfig, adapter_name: str, target: nn.Module, **kwargs: Any
    ) -> nn.Module:
        base = target.get_base_layer() if hasattr(target, "get_base_layer") else target
        if isinstance(base, nn.Linear):
            return HRALinear(target, adapter_name, hra_config, r=kwargs["r"])
        if isinstance(base, nn.Conv2d):
            return HRAConv2d(target, adapter_name, hra_config, r=kwargs["r"])
        raise TypeError(
            f"Target module {base} (type {type(base).__name__}) is not supported by HRA. Currently, only "
            "`torch.nn.Linear` and `torch.nn.Conv2d` are supported; remove it from target_modules."
        )
