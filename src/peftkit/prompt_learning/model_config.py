"""Filling a prompt-learning config's model-dependent fields from the base model's config."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from torch import nn

from ..config import PromptLearningConfig
from ..utils.peft_types import TaskType
from .prefix_cache import is_kv_prefix

# attribute names under which model configs of different architectures store the same quantity
_NUM_LAYERS_KEYS = ("num_hidden_layers", "num_layers", "n_layer")
_TOKEN_DIM_KEYS = ("hidden_size", "n_embd", "d_model")
_NUM_HEADS_KEYS = ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads")


def model_config_of(model: nn.Module) -> Any:
    """The text config of `model` (a composite model's text part), or None for a plain nn.Module."""
    config = getattr(model, "config", None)
    get_text = getattr(config, "get_text_config", None)
    if callable(get_text):
        try:
            return get_text()
        except (TypeError, ValueError):
            return config
    return config


def _lookup(model_config: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = getattr(model_config, key, None)
        if value is not None:
            return value
    return None


def _require(config: PromptLearningConfig, field: str, model_config: Any, keys: tuple[str, ...]) -> None:
    if getattr(config, field) is not None:
        return
    value = _lookup(model_config, keys) if model_config is not None else None
    if value is None:
        raise ValueError(
            f"Cannot infer `{field}` for {type(config).__name__}: the base model's config has none of "
            f"{list(keys)}. Set `{field}` in the config explicitly."
        )
    setattr(config, field, value)


def fill_prompt_learning_config(config: PromptLearningConfig, model: nn.Module) -> PromptLearningConfig:
    """Fill `num_layers`, `token_dim`, `num_attention_heads`, `num_transformer_submodules` and
    `encoder_hidden_size` (where the method has it) from `model`'s config when they are None.

    For a key/value prefix (prefix tuning, Cartridge) on a model with `num_key_value_heads` (grouped-query attention), the prefix has the
    shape of the model's key/value states, so `token_dim` becomes `head_dim * num_key_value_heads` and
    `num_attention_heads` becomes `num_key_value_heads` (always, as PEFT does).
    """
    if config.num_virtual_tokens is None:
        raise ValueError(f"{type(config).__name__} needs num_virtual_tokens (the number of virtual tokens).")
    model_config = model_config_of(model)
    _require(config, "num_layers", model_config, _NUM_LAYERS_KEYS)
    _require(config, "token_dim", model_config, _TOKEN_DIM_KEYS)
    _require(config, "num_attention_heads", model_config, _NUM_HEADS_KEYS)
    if config.num_transformer_submodules is None:
        config.num_transformer_submodules = 2 if config.task_type == TaskType.SEQ_2_SEQ_LM else 1
    kv_heads = getattr(model_config, "num_key_value_heads", None)
    if is_kv_prefix(config) and kv_heads is not None:
        hidden = _lookup(model_config, _TOKEN_DIM_KEYS)
        heads = _lookup(model_config, _NUM_HEADS_KEYS)
        head_dim = getattr(model_config, "head_dim", None) or hidden // heads
        config.token_dim = head_dim * kv_heads
        config.num_attention_heads = kv_heads
    if hasattr(config, "encoder_hidden_size") and config.encoder_hidden_size is None:
        config.encoder_hidden_size = config.token_dim
    return config


def _prepare_prompt_learning_config(
    peft_config: PromptLearningConfig, model_config: Any
) -> PromptLearningConfig:
    """peft's form of `fill_prompt_learning_config`: the fields filled from a model config (a transformers
    config or its `to_dict()`; a composite model's `text_config` is used) instead of from a model."""
    if isinstance(model_config, dict):
        text = model_config.get("text_config") or model_config
        model_config = SimpleNamespace(**text)
    return fill_prompt_learning_config(peft_config, SimpleNamespace(config=model_config))
