"""The causal-LM forward of a CPT adapter once its virtual tokens are in the input: CPT's own labels
(the context's label tokens are learned from too) and loss (see `tuners/cpt/loss.py`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..tuners.cpt import CPTConfig, CPTEmbedding
from ..tuners.cpt.loss import cpt_labels_and_type_mask


def cpt_forward(
    base: nn.Module,
    config: CPTConfig,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor | None,
    kwargs: dict[str, Any],
) -> Any:
    """`base` on the prompted input; with `labels`, the loss is CPT's over the label roles of context and
    batch (`input_type_mask=`, the batch's token roles, defaults to role 4 everywhere)."""
    input_type_mask = kwargs.pop("input_type_mask", None)
    if labels is None:
        return base(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
    cpt_labels, type_mask = cpt_labels_and_type_mask(config, labels, input_type_mask)
    output = base(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=cpt_labels, **kwargs)
    return CPTEmbedding.calculate_loss(output, cpt_labels, type_mask, config)
