"""The forward pass of each task class with a prompt-learning adapter.

Prompt tuning, P-tuning and multitask prompt tuning prepend the virtual-token embeddings to the input
embeddings (and ones to the attention mask, -100 to causal-LM labels, zeros to token_type_ids); prefix
tuning passes the prefix as the model's cache (`cache`, or `past_key_values` before transformers 5.24) and
prepends ones to the attention mask. Which inputs are
kept, extended or dropped follows PEFT 0.21 task by task, so outputs match it.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch

from ..utils.cache_names import cache_argument_or_default, get_cache, pop_cache, rename_cache_for
from ..utils.other import _get_batch_size
from ..utils.peft_types import PeftType, TaskType
from . import heads
from .cpt import cpt_forward
from .prefix_cache import is_kv_prefix
from .prompts import get_prompt

if TYPE_CHECKING:
    from ..peft_model import PeftModel

_POSITION_IDS_IGNORED = (
    "Position ids are not supported for parameter efficient tuning. Ignoring position ids."
)
_TOKEN_TYPES_IGNORED = (
    "Token type ids are not supported for parameter efficient tuning. Ignoring token type ids"
)


def _active_config(peft_model: PeftModel):
    state = peft_model._prompt_learning
    return state.peft_config[state.active_adapter]


def extend_mask(mask: torch.Tensor | None, num_virtual_tokens: int) -> torch.Tensor | None:
    """Ones for the virtual tokens in front of a 2-D attention mask."""
    if mask is None:
        return None
    if mask.dim() != 2:
        raise ValueError(
            f"Prompt learning needs a 2-D attention mask (batch, sequence), got shape {tuple(mask.shape)}."
        )
    ones = torch.ones(mask.shape[0], num_virtual_tokens, dtype=mask.dtype, device=mask.device)
    return torch.cat((ones, mask), dim=1)


def _drop(kwargs: dict[str, Any], key: str, message: str | None) -> None:
    if kwargs.get(key) is not None and message:
        warnings.warn(message)
    kwargs.pop(key, None)


def _prepend_prompts(
    peft_model: PeftModel, input_ids, inputs_embeds, batch: int, task_ids, count: int | None = None
):
    if inputs_embeds is None:
        inputs_embeds = peft_model.word_embeddings(input_ids)
    prompts = get_prompt(peft_model, batch, task_ids=task_ids)
    if count is not None:
        prompts = prompts[:, :count]
    return torch.cat((prompts.to(inputs_embeds.dtype), inputs_embeds), dim=1)


def _prefix(peft_model: PeftModel, kwargs: dict[str, Any], batch: int, receiver: Any) -> None:
    """Put the prefix cache into `kwargs` under the cache argument of `receiver`, the module called next."""
    if get_cache(kwargs) is not None:
        raise ValueError(
            "Do not pass a cache (`cache`/`past_key_values`) to a prefix-tuning model: the prefix is its cache. "
            "Use generate(), which adds the prefix on the first step only."
        )
    pop_cache(kwargs)
    kwargs[cache_argument_or_default(receiver)] = get_prompt(peft_model, batch)


def causal_lm_forward(
    peft_model: PeftModel,
    input_ids=None,
    attention_mask=None,
    inputs_embeds=None,
    labels=None,
    task_ids=None,
    **kwargs,
) -> Any:
    """Causal LM: logits cover the virtual tokens too (except with prefix tuning)."""
    config = _active_config(peft_model)
    base = peft_model.base_model
    batch = _get_batch_size(input_ids, inputs_embeds)
    n = config.num_virtual_tokens
    attention_mask = extend_mask(attention_mask, n)
    if is_kv_prefix(config):
        _prefix(peft_model, kwargs, batch, base)
        return base(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            labels=labels,
            **kwargs,
        )
    _drop(kwargs, "position_ids", _POSITION_IDS_IGNORED)
    if kwargs.get("token_type_ids") is not None:
        tt = kwargs["token_type_ids"]
        kwargs["token_type_ids"] = torch.cat((torch.zeros_like(tt[:, :1]).expand(-1, n), tt), dim=1)
    if config.peft_type == PeftType.CPT:  # its labels and loss cover the virtual tokens too
        inputs_embeds = _prepend_prompts(peft_model, input_ids, inputs_embeds, batch, task_ids)
        return cpt_forward(base, config, inputs_embeds, attention_mask, labels, kwargs)
    if labels is not None:
        labels = torch.cat(
            (torch.full((batch, n), -100, dtype=labels.dtype, device=labels.device), labels), dim=1
        )
    inputs_embeds = _prepend_prompts(peft_model, input_ids, inputs_embeds, batch, task_ids)
    return base(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)


def seq2seq_forward(
    peft_model: PeftModel,
    input_ids=None,
    attention_mask=None,
    inputs_embeds=None,
    decoder_input_ids=None,
    decoder_attention_mask=None,
    decoder_inputs_embeds=None,
    labels=None,
    task_ids=None,
    **kwargs,
) -> Any:
    """Encoder-decoder: virtual tokens in front of the encoder input; prefix tuning prefixes the decoder's
    self-attention (the encoder's attention mask is then left as it is)."""
    config = _active_config(peft_model)
    base = peft_model.base_model
    batch = _get_batch_size(input_ids, inputs_embeds)
    decoder = {
        "decoder_input_ids": decoder_input_ids,
        "decoder_attention_mask": decoder_attention_mask,
        "decoder_inputs_embeds": decoder_inputs_embeds,
        "labels": labels,
    }
    if is_kv_prefix(config):
        _prefix(peft_model, kwargs, batch, base)
        return base(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            **decoder,
            **kwargs,
        )
    n = config.num_virtual_tokens
    _drop(kwargs, "position_ids", _POSITION_IDS_IGNORED)
    _drop(kwargs, "token_type_ids", _TOKEN_TYPES_IGNORED)
    if config.peft_type == PeftType.MULTITASK_PROMPT_TUNING and config.num_transformer_submodules == 2:
        decoder = _multitask_decoder_inputs(peft_model, decoder, batch, task_ids, n)
    inputs_embeds = _prepend_prompts(peft_model, input_ids, inputs_embeds, batch, task_ids, count=n)
    return base(
        inputs_embeds=inputs_embeds, attention_mask=extend_mask(attention_mask, n), **decoder, **kwargs
    )


def _multitask_decoder_inputs(peft_model: PeftModel, decoder: dict, batch: int, task_ids, n: int) -> dict:
    """Multitask prompt tuning also puts its second block of virtual tokens in front of the decoder input
    (as PEFT does); labels get -100 for them. Decoder inputs given as ids are embedded first (PEFT fails
    on those)."""
    base = peft_model.base_model
    labels, embeds, ids = decoder["labels"], decoder["decoder_inputs_embeds"], decoder["decoder_input_ids"]
    if embeds is None:
        if ids is None:
            if labels is None:
                return decoder
            ids = base.prepare_decoder_input_ids_from_labels(labels=labels)
        embeds = peft_model.word_embeddings(ids)
    prompts = get_prompt(peft_model, batch, task_ids=task_ids)[:, n:].to(embeds.dtype)
    result = {
        "decoder_input_ids": None,
        "decoder_inputs_embeds": torch.cat((prompts, embeds), dim=1),
        "decoder_attention_mask": extend_mask(decoder["decoder_attention_mask"], prompts.shape[1]),
        "labels": labels,
    }
    if labels is not None:
        ignore = torch.full((batch, prompts.shape[1]), -100, dtype=labels.dtype, device=labels.device)
        result["labels"] = torch.cat((ignore, labels), dim=1)
    return result


def _classification_forward(
    peft_model: PeftModel,
    head,
    input_ids,
    attention_mask,
    inputs_embeds,
    labels,
    task_ids,
    kwargs,
    extend_labels: bool,
) -> Any:
    config = _active_config(peft_model)
    base = peft_model.base_model
    batch = _get_batch_size(input_ids, inputs_embeds)
    n = config.num_virtual_tokens
    attention_mask = extend_mask(attention_mask, n)
    if is_kv_prefix(config):
        if heads.accepts_cache(base):
            _prefix(peft_model, kwargs, batch, base)
            return base(
                input_ids=input_ids,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                labels=labels,
                **kwargs,
            )
        return_dict = kwargs.pop("return_dict", None)
        return_dict = return_dict if return_dict is not None else getattr(base.config, "return_dict", True)
        backbone = heads.backbone_of(base)
        _prefix(peft_model, kwargs, batch, backbone)
        outputs = backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        return head(base, outputs, labels, return_dict)
    _drop(kwargs, "position_ids", _POSITION_IDS_IGNORED)
    if kwargs.get("token_type_ids") is not None:
        tt = kwargs["token_type_ids"]
        kwargs["token_type_ids"] = torch.cat((torch.zeros_like(tt[:, :1]).expand(-1, n), tt), dim=1)
    if extend_labels and labels is not None:
        # PEFT passes the labels unchanged and the loss fails on the length mismatch; the virtual tokens
        # get the ignore index instead
        labels = torch.cat(
            (torch.full((batch, n), -100, dtype=labels.dtype, device=labels.device), labels), dim=1
        )
    inputs_embeds = _prepend_prompts(peft_model, input_ids, inputs_embeds, batch, task_ids)
    return base(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)


def sequence_classification_forward(
    peft_model: PeftModel,
    input_ids=None,
    attention_mask=None,
    inputs_embeds=None,
    labels=None,
    task_ids=None,
    **kwargs,
) -> Any:
    return _classification_forward(
        peft_model,
        heads.sequence_classification,
        input_ids,
        attention_mask,
        inputs_embeds,
        labels,
        task_ids,
        kwargs,
        False,
    )


def token_classification_forward(
    peft_model: PeftModel,
    input_ids=None,
    attention_mask=None,
    inputs_embeds=None,
    labels=None,
    task_ids=None,
    **kwargs,
) -> Any:
    """Token classification: with virtual tokens in the input, the logits cover them too."""
    return _classification_forward(
        peft_model,
        heads.token_classification,
        input_ids,
        attention_mask,
        inputs_embeds,
        labels,
        task_ids,
        kwargs,
        True,
    )


def question_answering_forward(
    peft_model: PeftModel,
    input_ids=None,
    attention_mask=None,
    inputs_embeds=None,
    start_positions=None,
    end_positions=None,
    task_ids=None,
    **kwargs,
) -> Any:
    """Extractive QA. As in PEFT, token_type_ids and position_ids are not used (a warning says so)."""
    config = _active_config(peft_model)
    base = peft_model.base_model
    batch = _get_batch_size(input_ids, inputs_embeds)
    n = config.num_virtual_tokens
    attention_mask = extend_mask(attention_mask, n)
    _drop(kwargs, "token_type_ids", _TOKEN_TYPES_IGNORED)
    _drop(kwargs, "position_ids", _POSITION_IDS_IGNORED)
    positions = {"start_positions": start_positions, "end_positions": end_positions}
    if is_kv_prefix(config):
        if heads.accepts_cache(base):
            _prefix(peft_model, kwargs, batch, base)
            return base(
                input_ids=input_ids,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                **positions,
                **kwargs,
            )
        return_dict = kwargs.pop("return_dict", None)
        return_dict = return_dict if return_dict is not None else getattr(base.config, "return_dict", True)
        backbone = heads.backbone_of(base)
        _prefix(peft_model, kwargs, batch, backbone)
        outputs = backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        return heads.question_answering(base, outputs, start_positions, end_positions, return_dict)
    inputs_embeds = _prepend_prompts(peft_model, input_ids, inputs_embeds, batch, task_ids)
    return base(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **positions, **kwargs)


def feature_extraction_forward(
    peft_model: PeftModel, input_ids=None, attention_mask=None, inputs_embeds=None, task_ids=None, **kwargs
) -> Any:
    """Feature extraction: token_type_ids are not used (and position_ids only with prefix tuning), as in PEFT."""
    config = _active_config(peft_model)
    base = peft_model.base_model
    batch = _get_batch_size(input_ids, inputs_embeds)
    n = config.num_virtual_tokens
    attention_mask = extend_mask(attention_mask, n)
    _drop(kwargs, "token_type_ids", _TOKEN_TYPES_IGNORED)
    if is_kv_prefix(config):
        _prefix(peft_model, kwargs, batch, base)
        return base(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs)
    _drop(kwargs, "position_ids", _POSITION_IDS_IGNORED)
    inputs_embeds = _prepend_prompts(peft_model, input_ids, inputs_embeds, batch, task_ids)
    return base(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)


def prompt_learning_forward(peft_model: PeftModel, **kwargs: Any) -> Any:
    """The forward of `peft_model`'s task class with its active prompt-learning adapter (or of the base
    model alone inside `disable_adapter()`)."""
    if kwargs.pop("adapter_names", None) is not None:
        raise ValueError(
            "adapter_names= (a different adapter per sample) is not supported for prompt-learning adapters; "
            "call set_adapter() and run each adapter's samples separately."
        )
    rename_cache_for(kwargs, peft_model.get_base_model())
    if peft_model._prompt_learning.disabled:
        kwargs.pop("task_ids", None)
        return peft_model.base_model(**{k: v for k, v in kwargs.items() if v is not None})
    forward = _TASK_FORWARDS.get(peft_model._prompt_task)
    if forward is not None:
        return forward(peft_model, **kwargs)
    raise ValueError(
        f"{type(peft_model).__name__} has no prompt-learning forward; create the model with get_peft_model and a "
        "config whose task_type names the task (CAUSAL_LM, SEQ_2_SEQ_LM, SEQ_CLS, TOKEN_CLS, QUESTION_ANS, "
        "FEATURE_EXTRACTION)."
    )


# the task forward of each PeftModel task class, by the task it declares (`PeftModel._prompt_task`)
_TASK_FORWARDS = {
    TaskType.SEQ_2_SEQ_LM: seq2seq_forward,
    TaskType.CAUSAL_LM: causal_lm_forward,
    TaskType.TOKEN_CLS: token_classification_forward,
    TaskType.SEQ_CLS: sequence_classification_forward,
    TaskType.QUESTION_ANS: question_answering_forward,
    TaskType.FEATURE_EXTRACTION: feature_extraction_forward,
}
