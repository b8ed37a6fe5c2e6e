"""FourierFTModel: the FourierFT tuner (which layers it adapts, with how many coefficients)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ...utils.constants import TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING
from ...utils.other import get_pattern_key
from .._linear_kind import linear_or_conv1d
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
        config = fourierft_config
        is_conv1d = linear_or_conv1d(target, config, "FourierFT")
        return FourierFTLinear(
            target, adapter_name, config, n_frequency=kwargs["n_frequency"], is_target_conv_1d_layer=is_conv1d
        )
