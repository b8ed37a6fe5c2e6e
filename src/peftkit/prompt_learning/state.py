"""The prompt-learning side of a PeftModel: its adapters' configs, the active one, and the encoders.

For these methods PEFT's module tree is `PeftModel.base_model` = the original model (untouched),
`PeftModel.prompt_encoder` = a ModuleDict adapter name -> encoder, and `PeftModel.word_embeddings` =
the model's input embedding; peftkit builds the same tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..config import PromptLearningConfig
from ..utils.modules_to_save import ModulesToSaveWrapper, set_modules_to_save
from .encoders import build_prompt_encoder
from .model_config import fill_prompt_learning_config

if TYPE_CHECKING:
    from ..peft_model import PeftModel


@dataclass
class PromptLearningState:
    """Adapter bookkeeping of a prompt-learning PeftModel (not a module: nothing here is saved)."""

    peft_config: dict[str, PromptLearningConfig] = field(default_factory=dict)
    active_adapter: str = "default"
    disabled: bool = False


def _input_embeddings(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if callable(get) else None
    if not isinstance(embeddings, nn.Module) or getattr(embeddings, "weight", None) is None:
        raise ValueError(
            f"Prompt learning needs the model's input embedding, but {type(model).__name__}.get_input_embeddings() "
            "gives none. Use a transformers model (or implement get_input_embeddings)."
        )
    return embeddings


def setup_prompt_learning(
    peft_model: PeftModel, model: nn.Module, config: PromptLearningConfig, adapter_name: str
) -> None:
    """Make `peft_model` a prompt-learning wrapper of `model` with a first adapter `adapter_name`."""
    if config.task_type is None:
        raise ValueError(
            f"{type(config).__name__} needs a task_type (e.g. 'CAUSAL_LM', 'SEQ_CLS'): the virtual tokens are added "
            "by the task-specific PeftModelFor* class that get_peft_model picks from it."
        )
    peft_model.base_model = model
    peft_model._prompt_learning = PromptLearningState(active_adapter=adapter_name)
    peft_model.word_embeddings = _input_embeddings(model)
    peft_model.prompt_encoder = nn.ModuleDict({})
    for param in model.parameters():
        param.requires_grad_(False)
    add_prompt_adapter(peft_model, adapter_name, config)
    if hasattr(model, "config") and hasattr(model.config, "pretraining_tp"):
        model.config.pretraining_tp = 1


def add_prompt_adapter(peft_model: PeftModel, adapter_name: str, config: PromptLearningConfig) -> None:
    """Create the encoder of a new prompt-learning adapter (and its modules_to_save copies)."""
    state = peft_model._prompt_learning
    known = next(iter(state.peft_config.values()), None)
    if known is not None and known.peft_type != config.peft_type:
        raise ValueError(
            f"Cannot combine adapters with different peft types ({known.peft_type.value} and "
            f"{config.peft_type.value}) in one PeftModel; make a separate PeftModel for each."
        )
    model = peft_model.base_model
    fill_prompt_learning_config(config, model)
    encoder = build_prompt_encoder(config, peft_model.word_embeddings)
    encoder.to(peft_model.word_embeddings.weight.device)
    state.peft_config[adapter_name] = config
    try:
        peft_model.prompt_encoder[adapter_name] = encoder
        if config.modules_to_save:
            set_modules_to_save(model, adapter_name, config.modules_to_save)
            _activate_modules_to_save(model, state.active_adapter)
    except Exception:
        del state.peft_config[adapter_name]
        if adapter_name in peft_model.prompt_encoder:
            del peft_model.prompt_encoder[adapter_name]
        raise


def _activate_modules_to_save(model: nn.Module, adapter_name: str) -> None:
    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
            module.set_adapter(adapter_name)


def set_prompt_adapter(peft_model: PeftModel, adapter_name: str) -> None:
    """Make `adapter_name` the adapter whose virtual tokens are used (every prompt encoder stays
    trainable, as in PEFT; the active adapter's modules_to_save copy is the one that trains)."""
    state = peft_model._prompt_learning
    if adapter_name not in state.peft_config:
        raise ValueError(
            f"Adapter {adapter_name} not found; available adapters: {sorted(state.peft_config)}."
        )
    state.active_adapter = adapter_name
    _activate_modules_to_save(peft_model.base_model, adapter_name)


def delete_prompt_adapter(peft_model: PeftModel, adapter_name: str) -> None:
    """Remove an adapter; if it was active, the first remaining one becomes active."""
    state = peft_model._prompt_learning
    if adapter_name not in state.peft_config:
        raise ValueError(
            f"Adapter {adapter_name} does not exist; available adapters: {sorted(state.peft_config)}."
        )
    if len(state.peft_config) == 1:
        raise ValueError(
            f"Cannot delete '{adapter_name}', the only adapter of this prompt-learning model; use "
            "get_base_model() to get the model without it."
        )
    del state.peft_config[adapter_name]
    del peft_model.prompt_encoder[adapter_name]
    for module in peft_model.base_model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            module.delete_adapter(adapter_name)
    if state.active_adapter == adapter_name:
        set_prompt_adapter(peft_model, next(iter(state.peft_config)))


def encoder_device(encoder: nn.Module) -> torch.device:
    return next(encoder.parameters()).device
