"""`generate` with a prompt-learning adapter, on transformers' generation loop and `Cache` objects.

The base model's `prepare_inputs_for_generation` is wrapped for the duration of the call: on the first
step the virtual tokens are added (prompt tuning: prepended to the input embeddings; prefix tuning: the
prefix cache replaces the empty cache), and on every step the attention mask gets ones for the virtual
tokens. Prefix tuning shifts `position_ids` by the number of virtual tokens; the other methods drop
them (the model counts positions from its cache), as PEFT does.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from ..utils.cache_names import (
    CACHE_NAMES,
    cache_argument_or_default,
    get_cache,
    rename_cache_for,
    set_cache,
)
from .forward import _TOKEN_TYPES_IGNORED, extend_mask
from .prefix_cache import is_kv_prefix, write_prefix_into
from .prompts import get_prompt

if TYPE_CHECKING:
    from ..peft_model import PeftModel


def _is_first_step(cache: Any) -> bool:
    return cache is None or cache.get_seq_length() == 0


def _check_cache(cache: Any) -> None:
    from transformers import DynamicCache, EncoderDecoderCache

    inner = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
    if cache is not None and not isinstance(inner, DynamicCache):
        raise ValueError(
            f"Prefix tuning generates with a dynamic cache only, got {type(inner).__name__}; leave "
            "cache_implementation at its default."
        )


def _prepare_inputs(
    peft_model: PeftModel, original, input_ids, *args, task_ids=None, **kwargs
) -> dict[str, Any]:
    state = peft_model._prompt_learning
    config = state.peft_config[state.active_adapter]
    inputs = original(input_ids, *args, **kwargs)
    n = config.num_virtual_tokens
    encoder_decoder = bool(getattr(peft_model.base_model.config, "is_encoder_decoder", False))
    cache = get_cache(inputs)
    first = _is_first_step(cache)
    if is_kv_prefix(config):
        if first:
            _check_cache(cache)
            ids_key = "decoder_input_ids" if encoder_decoder else "input_ids"
            source = inputs.get(ids_key) if inputs.get(ids_key) is not None else inputs.get("inputs_embeds")
            # under the name the generation loop used (it reads the cache back from the outputs under it)
            name = next((n for n in CACHE_NAMES if n in inputs), None) or cache_argument_or_default(
                peft_model.base_model
            )
            prefix = get_prompt(peft_model, source.shape[0])
            set_cache(inputs, prefix if cache is None else write_prefix_into(cache, prefix), name)
        if not encoder_decoder:
            inputs["attention_mask"] = extend_mask(inputs.get("attention_mask"), n)
            if inputs.get("position_ids") is not None:
                inputs["position_ids"] = inputs["position_ids"] + n
        return inputs
    if encoder_decoder:
        return inputs  # the prompts went into the encoder input before generation started
    inputs["attention_mask"] = extend_mask(inputs.get("attention_mask"), n)
    inputs["position_ids"] = None
    if inputs.get("token_type_ids") is not None:
        warnings.warn(_TOKEN_TYPES_IGNORED)
        inputs["token_type_ids"] = None
    if first:
        embeds = inputs.get("inputs_embeds")
        if embeds is None:
            embeds = peft_model.word_embeddings(inputs["input_ids"])
        prompts = get_prompt(peft_model, embeds.shape[0], task_ids=task_ids).to(embeds.dtype)
        inputs["inputs_embeds"] = torch.cat((prompts, embeds), dim=1)
        inputs["input_ids"] = None
    return inputs


@contextmanager
def _wrapped_prepare(peft_model: PeftModel, task_ids: torch.Tensor | None = None) -> Iterator[None]:
    base = peft_model.base_model
    original = base.prepare_inputs_for_generation
    had_own = "prepare_inputs_for_generation" in base.__dict__

    def prepare_inputs_for_generation(input_ids, *args, task_ids=task_ids, **kwargs):
        return _prepare_inputs(peft_model, original, input_ids, *args, task_ids=task_ids, **kwargs)

    base.prepare_inputs_for_generation = prepare_inputs_for_generation
    try:
        yield
    finally:
        if had_own:
            base.prepare_inputs_for_generation = original
        else:
            del base.prepare_inputs_for_generation  # the class's method shows through again


def _expand_task_ids(task_ids: torch.Tensor | None, kwargs: dict[str, Any]) -> torch.Tensor | None:
    """Beam search and num_return_sequences repeat every sample; repeat its task id with it."""
    if task_ids is None:
        return None
    repeat = max(int(kwargs.get("num_beams") or 1), int(kwargs.get("num_return_sequences") or 1))
    config = kwargs.get("generation_config")
    if config is not None:
        repeat = max(repeat, int(config.num_beams or 1), int(config.num_return_sequences or 1))
    return task_ids.repeat_interleave(repeat) if repeat > 1 else task_ids


def causal_lm_generate(peft_model: PeftModel, *args: Any, **kwargs: Any) -> Any:
    """`base_model.generate` with the active adapter's virtual tokens."""
    base = peft_model.base_model
    rename_cache_for(kwargs, base)
    task_ids = kwargs.pop("task_ids", None)
    if peft_model._prompt_learning.disabled:
        return base.generate(*args, **kwargs)
    with _wrapped_prepare(peft_model, _expand_task_ids(task_ids, kwargs)):
        return base.generate(*args, **kwargs)


def seq2seq_generate(peft_model: PeftModel, *args: Any, **kwargs: Any) -> Any:
    """Encoder-decoder generation: prompts go into the encoder input once; a prefix goes into the
    decoder's cache on the first step."""
    base = peft_model.base_model
    rename_cache_for(kwargs, base)
    task_ids = kwargs.pop("task_ids", None)
    state = peft_model._prompt_learning
    if state.disabled:
        return base.generate(*args, **kwargs)
    config = state.peft_config[state.active_adapter]
    if is_kv_prefix(config):
        with _wrapped_prepare(peft_model):
            return base.generate(*args, **kwargs)
    if args:
        kwargs["input_ids"] = args[0]
    input_ids = kwargs.pop("input_ids", None)
    embeds = kwargs.pop("inputs_embeds", None)
    if embeds is None:
        if input_ids is None:
            raise ValueError("Pass input_ids or inputs_embeds to generate().")
        embeds = peft_model.word_embeddings(input_ids)
    for key in ("position_ids", "token_type_ids"):
        if kwargs.pop(key, None) is not None:
            warnings.warn(f"{key} are not supported for parameter efficient tuning and are ignored.")
    n = config.num_virtual_tokens
    prompts = get_prompt(peft_model, embeds.shape[0], task_ids=task_ids)[:, :n]
    kwargs["inputs_embeds"] = torch.cat((prompts.to(embeds.dtype), embeds), dim=1)
    kwargs["attention_mask"] = extend_mask(kwargs.get("attention_mask"), n)
    return base.generate(**kwargs)
