"""The method registry (one place to register a method) and the low-level injection API."""

from __future__ import annotations

from typing import Any

from torch import nn

from .config import PeftConfig
from .utils.peft_types import PeftType

PEFT_TYPE_TO_CONFIG_MAPPING: dict[PeftType, type[PeftConfig]] = {}
PEFT_TYPE_TO_TUNER_MAPPING: dict[PeftType, type] = {}
PEFT_TYPE_TO_PREFIX_MAPPING: dict[PeftType, str] = {}


def register_peft_method(
    *,
    peft_type: PeftType | str,
    config_cls: type[PeftConfig],
    model_cls: type | None,
    prefix: str | None = None,
) -> None:
    """Make a method known by its PeftType: its config class, its tuner class, its parameter prefix."""
    peft_type = PeftType(peft_type)
    PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
    if model_cls is not None:
        PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = model_cls
    if prefix is not None:
        PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = prefix


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
    """Add an adapter to `model` in place, without the PeftModel wrapper; returns the model."""
    if peft_config.is_prompt_learning or peft_config.is_adaption_prompt:
        raise ValueError(
            "`inject_adapter_in_model` does not support prompt learning and adaption prompt yet."
        )
    if peft_config.peft_type not in PEFT_TYPE_TO_TUNER_MAPPING:
        raise ValueError(f"`inject_adapter_in_model` does not support {peft_config.peft_type} yet.")
    tuner_cls = PEFT_TYPE_TO_TUNER_MAPPING[peft_config.peft_type]
    # as PEFT: adapters injected without the wrapper keep the base weights' dtype (only PeftModel autocasts)
    tuner = tuner_cls(
        model,
        peft_config,
        adapter_name=adapter_name,
        low_cpu_mem_usage=low_cpu_mem_usage,
        autocast_adapter_dtype=False,
    )
    return tuner.model
