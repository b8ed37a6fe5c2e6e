"""Small conveniences around adapters (PEFT's `peft.helpers`)."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from .adapter_contexts import disable_input_dtype_casting, rescale_adapter_scale
from .config import PeftConfig
from .tuners.lora import LoraModel
from .utils.signatures import update_forward_signature, update_generate_signature, update_signature

__all__ = [
    "MontecloraTrainerMixin",
    "check_if_peft_model",
    "disable_input_dtype_casting",
    "rescale_adapter_scale",
    "update_forward_signature",
    "update_generate_signature",
    "update_signature",
]


def check_if_peft_model(model_name_or_path: str | os.PathLike) -> bool:
    """Whether `model_name_or_path` (a local folder or a Hub repo id) holds a loadable adapter config.

    Args:
        model_name_or_path: the folder or repo id to check.

    Returns:
        True when its `adapter_config.json` exists and parses as a known adapter config, else False.
    """
    try:
        PeftConfig.from_pretrained(os.fspath(model_name_or_path))
    except Exception:  # any reason it cannot be loaded means "not a PEFT model" here, as in PEFT
        return False
    return True


class MontecloraTrainerMixin:
    """Mix into a transformers `Trainer` (or TRL's `SFTTrainer`, ...) to add MonteCLoRA's variational loss to
    the task loss: `class MontecloraTrainer(MontecloraTrainerMixin, Trainer): pass`.

    The loss added is each LoRA tuner's `_get_monteclora_loss()` (averaged over the tuners when the model
    holds several); without MonteCLoRA adapters it adds 0.
    """

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any
    ) -> Any:
        if return_outputs:
            task_loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
        else:
            task_loss, outputs = super().compute_loss(model, inputs, return_outputs=False, **kwargs), None
        losses = [m._get_monteclora_loss() for m in model.modules() if isinstance(m, LoraModel)]
        variational = sum(losses) / len(losses) if len(losses) > 1 else sum(losses)
        total = task_loss + variational
        return (total, outputs) if return_outputs else total
