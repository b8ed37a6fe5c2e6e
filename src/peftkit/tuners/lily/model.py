"""LilyModel: the Lily tuner. After its layers are created it points them at the A and B they share."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..tuners_utils import BaseTuner
from .config import LilyConfig
from .layer import LilyLayer, Linear
from .sharing import share_factors


class LilyModel(BaseTuner):
    """Adds Lily to `nn.Linear` layers: per target, A shared by `stride_A` consecutive layers and `num_B`
    B experts shared by all of them, mixed by each layer's router.

    Every adapter shares its factors this way, also one added with `add_adapter` or `load_adapter`.

    Example:
        >>> from peftkit import LilyConfig, get_peft_model
        >>> config = LilyConfig(r=32, stride_A=2, num_B=4, target_modules=["q_proj", "v_proj"])
        >>> model = get_peft_model(model, config)
    """

    prefix = "lily_"
    tuner_layer_cls = LilyLayer
    layer_classes = {nn.Linear: Linear}

    def _layer_kwargs(self, config: LilyConfig, key: str) -> dict[str, Any]:
        return {"r": config.r, "config": config}

    def inject_adapter(self, model: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        super().inject_adapter(model, adapter_name, **kwargs)
        share_factors(model, self.peft_config[adapter_name], adapter_name)
