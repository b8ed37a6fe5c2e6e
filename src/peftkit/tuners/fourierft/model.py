"""FourierFTModel: the FourierFT tuner (which layers it adapts, with how many coefficients)."""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from ...utils.constants import TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING
from ...utils.warnings import PeftWarning
from ..lora.model import get_pattern_key
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
    target_module_mapping = TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING

    def _layer_kwargs(self, config: FourierFTConfig, key: str) -> dict[str, Any]:
        pattern = get_pattern_key(config.n_frequency_pattern.keys(), key)
        return {"n_frequency": config.n_frequency_pattern.get(pattern, config.n_frequency), "config": config}

    def _create_new_module(
        self, fourierft_config: FourierFTConfig, adapter_name: str, target: nn.Module, **kwargs: Any
    ) -> nn.Module:
        from transformers.pytorch_utils import Conv1D

        config = fourierft_config
        base = target.get_base_layer() if hasattr(target, "get_base_layer") else target
        is_conv1d = isinstance(base, Conv1D)
        if not isinstance(base, nn.Linear) and not is_conv1d:
            raise TypeError(
                f"Target module {base} (type {type(base).__name__}) is not supported by FourierFT. Currently, only "
                "`torch.nn.Linear` and `transformers.pytorch_utils.Conv1D` are supported; remove it from "
                "target_modules."
            )
        if is_conv1d != config.fan_in_fan_out:
            layer_kind = "`Conv1D`" if is_conv1d else "`torch.nn.Linear`"
            warnings.warn(
                f"fan_in_fan_out is set to {config.fan_in_fan_out} but the target module is {layer_kind}. "
                f"Setting fan_in_fan_out to {is_conv1d}.",
                PeftWarning,
            )
            config.fan_in_fan_out = is_conv1d
        return FourierFTLinear(
            target, adapter_name, config, n_frequency=kwargs["n_frequency"], is_target_conv_1d_layer=is_conv1d
        )
