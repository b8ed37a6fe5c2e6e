"""ShiraModel: the SHiRA tuner (which layers it adapts, and the mask each one gets)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..tuners_utils import BaseTuner, BaseTunerLayer
from .config import ShiraConfig
from .layer import Linear, ShiraLayer


class ShiraModel(BaseTuner):
    """Adds SHiRA (sparse high-rank adapters) to `nn.Linear` layers.

    Example:
        >>> from peftkit import ShiraConfig, get_peft_model
        >>> model = get_peft_model(model, ShiraConfig(r=32, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "shira_"
    tuner_layer_cls = ShiraLayer
    layer_classes = {nn.Linear: Linear}

    def _layer_kwargs(self, config: ShiraConfig, key: str) -> dict[str, Any]:
        """The layer's mask comes from the config's mask function, called on the plain base layer before the
        adapter's values are drawn (as PEFT orders it); without a function there is no mask until a file
        provides the positions. Tensors the function makes default to the weight's device, also while adapter
        tensors are being created on the meta device (low_cpu_mem_usage): a mask must hold real positions."""
        target = self.model.get_submodule(key)
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        mask = None
        if config.mask_fn is not None and isinstance(base, nn.Linear):
            extra = {"random_seed": config.random_seed} if config.mask_type == "random" else {}
            with torch.device(base.weight.device):
                mask = config.mask_fn(base, config.r, **extra)
        return {"mask": mask, "r": config.r, "config": config}
