"""OSFModel: the OSF tuner (`nn.Linear` layers, as in PEFT)."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from ...utils.constants import (
    INCLUDE_LINEAR_LAYERS_SHORTHAND,
    TRANSFORMERS_MODELS_TO_OSF_TARGET_MODULES_MAPPING,
)
from ..tuners_utils import BaseTuner
from .config import OSFConfig
from .layer import Linear, OSFLayer


class OSFModel(BaseTuner):
    """Adds Orthogonal Subspace Fine-tuning to `nn.Linear` layers.

    Without `target_modules`, a model type PEFT has no default targets for gets every linear layer
    ("all-linear"), as in PEFT.

    Example:
        >>> from peftkit import OSFConfig, get_peft_model
        >>> model = get_peft_model(model, OSFConfig(effective_rank=0.5, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "osf_"
    tuner_layer_cls = OSFLayer
    layer_classes = {nn.Linear: Linear}

    def _prepare_adapter_config(self, config: OSFConfig, model_config: dict) -> OSFConfig:
        if config.target_modules is None and model_config.get("model_type") not in (
            TRANSFORMERS_MODELS_TO_OSF_TARGET_MODULES_MAPPING
        ):
            config.target_modules = INCLUDE_LINEAR_LAYERS_SHORTHAND
        return super()._prepare_adapter_config(config, model_config)

    def _layer_kwargs(self, config: OSFConfig, key: str) -> dict[str, Any]:
        # as PEFT: the first rank_pattern entry (in its order) whose regex occurs in the module name
        rank = next(
            (value for pattern, value in (config.rank_pattern or {}).items() if re.search(pattern, key)),
            config.effective_rank,
        )
        return {"effective_rank": rank, "config": config}
