"""SupertuningModel: the Super-Tuning tuner (which layers it adapts)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..tuners_utils import BaseTuner
from .config import SupertuningConfig
from .layer import Linear, SupertuningLayer


class SupertuningModel(BaseTuner):
    """Adds Super-Tuning to `nn.Linear` layers: a magnitude-chosen sparse set of weight entries trains,
    with an optional LoRA branch beside it (see `SupertuningConfig`).

    Example:
        >>> from peftkit import SupertuningConfig, get_peft_model
        >>> config = SupertuningConfig(target_modules=["q_proj", "v_proj"], sparsity=0.99, r=8, lora_alpha=16)
        >>> model = get_peft_model(model, config)
    """

    prefix = "supertuning_"
    tuner_layer_cls = SupertuningLayer
    layer_classes = {nn.Linear: Linear}

    def _check_new_adapter_config(self, config: SupertuningConfig) -> None:
        super()._check_new_adapter_config(config)
        saved = sorted({c.save_precomputed_indices for c in self.peft_config.values()})
        if len(saved) > 1:
            raise ValueError(
                "Super-Tuning indices must be saved for all adapters or none, but got multiple different values: "
                f"{saved}"
            )

    def _layer_kwargs(self, config: SupertuningConfig, key: str) -> dict[str, Any]:
        return {"config": config}
