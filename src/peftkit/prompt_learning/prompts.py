"""The virtual tokens of the active adapter, as the base model consumes them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..utils.peft_types import PeftType
from .prefix_cache import is_kv_prefix, prefix_to_cache
from .state import encoder_device

if TYPE_CHECKING:
    from ..peft_model import PeftModel


def _require_prompt_learning(peft_model: PeftModel) -> None:
    if getattr(peft_model, "_prompt_learning", None) is None:
        raise ValueError(
            "get_prompt / get_prompt_embedding_to_save apply to prompt-learning adapters (prompt tuning, prefix "
            "tuning, P-tuning, multitask prompt tuning) only."
        )


def _virtual_token_ids(config, device: torch.device) -> torch.Tensor:
    total = config.num_virtual_tokens * config.num_transformer_submodules
    if is_kv_prefix(config):
        total = config.num_virtual_tokens  # one prefix serves every layer (and submodule)
    return torch.arange(total, dtype=torch.long, device=device)


def get_prompt(peft_model: PeftModel, batch_size: int, task_ids: torch.Tensor | None = None) -> Any:
    """The active adapter's virtual tokens for a batch.

    Prefix tuning and Cartridge: a fresh `Cache` (`DynamicCache`, or `EncoderDecoderCache` for encoder-decoder models)
    holding the prefix keys and values, in the base model's dtype. Other methods: a tensor
    (batch, num_virtual_tokens * num_transformer_submodules, token_dim), in the encoder's dtype.
    Multitask prompt tuning needs `task_ids` (one task index per sample).
    """
    _require_prompt_learning(peft_model)
    state = peft_model._prompt_learning
    config = state.peft_config[state.active_adapter]
    encoder = peft_model.prompt_encoder[state.active_adapter]
    ids = _virtual_token_ids(config, encoder_device(encoder)).unsqueeze(0).expand(batch_size, -1)
    if is_kv_prefix(config):
        prefix = encoder(ids).to(peft_model.word_embeddings.weight.dtype)
        base_config = getattr(peft_model.base_model, "config", None)
        return prefix_to_cache(prefix, config, bool(getattr(base_config, "is_encoder_decoder", False)))
    if config.peft_type == PeftType.MULTITASK_PROMPT_TUNING:
        if task_ids is None:
            raise ValueError(
                "task_ids cannot be None: multitask prompt tuning needs `task_ids` (a LongTensor with one task index "
                "per sample) in forward() and generate()."
            )
        return encoder(ids, task_ids.to(ids.device))
    return encoder(ids)


def get_prompt_embedding_to_save(peft_model: PeftModel, adapter_name: str) -> torch.Tensor:
    """What is saved as `prompt_embeddings`: the computed virtual tokens (prefix tuning: the flat prefix
    of every layer; P-tuning: the encoder's output; multitask: the shared prompt), detached on the CPU."""
    _require_prompt_learning(peft_model)
    config = peft_model._prompt_learning.peft_config[adapter_name]
    encoder = peft_model.prompt_encoder[adapter_name]
    if config.peft_type == PeftType.MULTITASK_PROMPT_TUNING:
        return encoder.embedding.weight.detach().cpu()
    ids = _virtual_token_ids(config, encoder_device(encoder))
    was_training = encoder.training
    encoder.eval()  # what is saved must not depend on dropout (PEFT would save a dropped-out draw)
    try:
        with torch.no_grad():
            return encoder(ids.unsqueeze(0))[0].detach().cpu()
    finally:
        encoder.train(was_training)
