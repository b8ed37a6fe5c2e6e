"""Loading a saved prompt-learning (or adaption-prompt) adapter into a PeftModel."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import PeftConfig
from ..tuners.tuners_utils import set_adapter_trainable
from .state_dict import set_peft_model_state_dict


def uses_prompt_loading(config: PeftConfig) -> bool:
    return bool(getattr(config, "is_prompt_learning", False) or getattr(config, "is_adaption_prompt", False))


def check_trainable_load(config: PeftConfig, is_trainable: bool) -> None:
    """PEFT refuses to load a prompt-learning adapter for training: the file holds the computed virtual
    tokens, not the encoder (MLP, LSTM, projection) that produced them."""
    if is_trainable and getattr(config, "is_prompt_learning", False):
        raise ValueError(
            "Cannot set a prompt learning adapter to trainable when loading pretrained adapter: the file holds the "
            "computed virtual tokens, not their encoder. Load it with is_trainable=False, or train a new adapter "
            "from get_peft_model."
        )


def fill_prompt_adapter(
    model: nn.Module,
    weights: dict[str, torch.Tensor],
    adapter_name: str,
    is_trainable: bool,
    allow_missing_keys: bool,
) -> Any:
    """Copy `weights` into adapter `adapter_name` and settle its trainability: modules_to_save copies
    follow `is_trainable`; prompt encoders and adaption prompts keep requires_grad as PEFT leaves them."""
    check_trainable_load(model.peft_config[adapter_name], is_trainable)
    result = set_peft_model_state_dict(
        model, weights, adapter_name=adapter_name, missing_keys_are_errors=not allow_missing_keys
    )
    set_adapter_trainable(model, adapter_name, is_trainable)
    if not is_trainable:
        model.eval()
    return result
