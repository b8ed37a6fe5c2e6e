"""The method registry (filled by each method's one `register_peft_method` call) and the low-level
injection API."""

from __future__ import annotations

from typing import Any

from torch import nn

from .config import PeftConfig
from .tuners._registration import register_peft_method
from .tuners._registry import (
    PEFT_TYPE_TO_CONFIG_MAPPING,
    PEFT_TYPE_TO_DEFAULT_TARGET_MODULES,
    PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
    PEFT_TYPE_TO_PREFIX_MAPPING,
    PEFT_TYPE_TO_TUNER_MAPPING,
)

__all__ = [
    "PEFT_TYPE_TO_CONFIG_MAPPING",
    "PEFT_TYPE_TO_DEFAULT_TARGET_MODULES",
    "PEFT_TYPE_TO_MIXED_MODEL_MAPPING",
    "PEFT_TYPE_TO_PREFIX_MAPPING",
    "PEFT_TYPE_TO_TUNER_MAPPING",
    "get_peft_config",
    "inject_adapter_in_model",
    "register_peft_method",
]


def get_peft_config(config_dict: dict[str, Any]) -> PeftConfig:
    """Build the config object a dict describes (its `peft_type` picks the class)."""
    return PeftConfig.from_peft_type(**config_dict)


def inject_adapter_in_model(
    peft_config: PeftConfig,
    model: nn.Module,
    adapter_name: str = "default",
    low_cpu_mem_usage: bool = False,
    state_dict: dict | None = None,
) -> nn.Module:
    """Add an adapter to `model` in place, without the PeftModel wrapper; returns the model.

    With `state_dict` (adapter tensors keyed as in `model`), the modules its keys name are adapted
    rather than those the config's `target_modules` selects (only the keys are read): for checkpoints
    whose targets are not known.
    """
    if peft_config.is_prompt_learning or peft_config.is_adaption_prompt:
        raise ValueError(
            "`inject_adapter_in_model` does not support prompt learning and adaption prompt yet."
        )
    if peft_config.peft_type not in PEFT_TYPE_TO_TUNER_MAPPING:
        raise ValueError(f"`inject_adapter_in_model` does not support {peft_config.peft_type} yet.")
    tuner_cls = PEFT_TYPE_TO_TUNER_MAPPING[peft_config.peft_type]
    if getattr(tuner_cls, "uses_shared_state", False):
        raise ValueError(
            f"`inject_adapter_in_model` does not support {peft_config.peft_type.value} because it uses shared state "
            "stored on the tuner. Please use `get_peft_model` instead."
        )
    # as PEFT: adapters injected without the wrapper keep the base weights' dtype (only PeftModel autocasts)
    tuner = tuner_cls(
        model,
        peft_config,
        adapter_name=adapter_name,
        low_cpu_mem_usage=low_cpu_mem_usage,
        state_dict=state_dict,
        autocast_adapter_dtype=False,
    )
    return tuner.model
