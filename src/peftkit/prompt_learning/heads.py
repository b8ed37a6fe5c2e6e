"""Task heads applied by hand for prefix tuning on models whose task class takes no cache.

transformers' BERT-style task classes (`BertForSequenceClassification`, ...) do not pass a cache to
their backbone, so prefix tuning calls the backbone (`model.<base_model_prefix>`) with the prefix and
applies the head and the loss as those classes do.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..utils.cache_names import cache_argument


def accepts_cache(model: nn.Module) -> bool:
    """Whether `model.forward` takes a cache, as `cache` (transformers >= 5.24) or `past_key_values`."""
    return cache_argument(model) is not None


def backbone_of(model: nn.Module) -> nn.Module:
    prefix = getattr(model, "base_model_prefix", "")
    backbone = getattr(model, prefix, None) if prefix else None
    if backbone is None or not accepts_cache(backbone):
        raise ValueError(
            f"Prefix tuning needs a model that accepts a cache (`cache` or `past_key_values`); {type(model).__name__} "
            "does not, and neither "
            "does a backbone under `base_model_prefix`. Use prompt tuning or P-tuning with this model."
        )
    return backbone


def _head(model: nn.Module, name: str) -> nn.Module:
    head = getattr(model, name, None)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no `{name}` head for prefix tuning to apply.")
    return head


def _as_output(output_cls: type, loss: Any, fields: dict[str, Any], outputs: Any, return_dict: bool) -> Any:
    if return_dict:
        return output_cls(
            loss=loss, **fields, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
    extras = tuple(v for v in (outputs.hidden_states, outputs.attentions) if v is not None)
    result = tuple(fields.values()) + extras
    return (loss, *result) if loss is not None else result


def _sequence_classification_loss(config: Any, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    num_labels = config.num_labels
    labels = labels.to(logits.device)
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        if num_labels == 1:
            return nn.functional.mse_loss(logits.squeeze(), labels.squeeze())
        return nn.functional.mse_loss(logits, labels)
    if config.problem_type == "single_label_classification":
        return nn.functional.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return nn.functional.binary_cross_entropy_with_logits(logits, labels)


def sequence_classification(model: nn.Module, outputs: Any, labels: Any, return_dict: bool) -> Any:
    """dropout(pooled output) -> classifier, and the loss by `config.problem_type` (BERT's head)."""
    from transformers.modeling_outputs import SequenceClassifierOutput

    pooled = outputs[1]
    dropout = getattr(model, "dropout", None)
    logits = _head(model, "classifier")(dropout(pooled) if dropout is not None else pooled)
    loss = _sequence_classification_loss(model.config, logits, labels) if labels is not None else None
    return _as_output(SequenceClassifierOutput, loss, {"logits": logits}, outputs, return_dict)


def token_classification(model: nn.Module, outputs: Any, labels: Any, return_dict: bool) -> Any:
    """dropout(sequence output) -> classifier, cross-entropy over all tokens (BERT's head)."""
    from transformers.modeling_outputs import TokenClassifierOutput

    sequence = outputs[0]
    dropout = getattr(model, "dropout", None)
    logits = _head(model, "classifier")(dropout(sequence) if dropout is not None else sequence)
    loss = None
    if labels is not None:
        num_labels = model.config.num_labels
        loss = nn.functional.cross_entropy(logits.view(-1, num_labels), labels.to(logits.device).view(-1))
    return _as_output(TokenClassifierOutput, loss, {"logits": logits}, outputs, return_dict)


def question_answering(model: nn.Module, outputs: Any, start: Any, end: Any, return_dict: bool) -> Any:
    """qa_outputs(sequence output) -> start and end logits; the loss averages both cross-entropies, with
    positions outside the sequence ignored (BERT's head)."""
    from transformers.modeling_outputs import QuestionAnsweringModelOutput

    logits = _head(model, "qa_outputs")(outputs[0])
    start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
    loss = None
    if start is not None and end is not None:
        start = start.squeeze(-1) if start.dim() > 1 else start
        end = end.squeeze(-1) if end.dim() > 1 else end
        ignored = start_logits.size(1)
        start = start.clamp(0, ignored).to(start_logits.device)
        end = end.clamp(0, ignored).to(end_logits.device)
        start_loss = nn.functional.cross_entropy(start_logits, start, ignore_index=ignored)
        end_loss = nn.functional.cross_entropy(end_logits, end, ignore_index=ignored)
        loss = (start_loss + end_loss) / 2
    fields = {"start_logits": start_logits, "end_logits": end_logits}
    return _as_output(QuestionAnsweringModelOutput, loss, fields, outputs, return_dict)
