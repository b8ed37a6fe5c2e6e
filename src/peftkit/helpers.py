"""Small conveniences around adapters (PEFT's `peft.helpers`)."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from .adapter_contexts import disable_input_dtype_casting, rescale_adapter_scale
from .config import PeftConfig
from .tuners._kappa_targets import KappaTuneSelector, find_kappa_target_modules
from .tuners.lora import LoraModel, dora
from .utils.signatures import update_forward_signature, update_generate_signature, update_signature

__all__ = [
    "DoraCaching",
    "KappaTuneSelector",
    "MontecloraTrainerMixin",
    "check_if_peft_model",
    "find_kappa_target_modules",
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


class DoraCaching:
    """Cache DoRA's weight norms in eval mode: faster inference, a little more memory.

    As a context manager, caching is on inside the block (`with DoraCaching(): model(x)`); called, it turns
    caching on or off for good (`DoraCaching()(enabled=False)`). A layer in training mode never caches. A
    cached norm is dropped as soon as a weight it depends on changes (see `peftkit.tuners.lora.dora`).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.prev_value: bool | None = None

    def __enter__(self) -> None:
        self.prev_value = dora.ENABLE_DORA_CACHING
        dora.ENABLE_DORA_CACHING = self.enabled

    def __exit__(self, *exc_info: Any) -> None:
        dora.ENABLE_DORA_CACHING = self.prev_value
        self.prev_value = None

    def __call__(self, enabled: bool = True) -> None:
        dora.ENABLE_DORA_CACHING = enabled
