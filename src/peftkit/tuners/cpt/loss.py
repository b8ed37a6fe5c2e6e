"""CPT's labels, token-role masks and loss (the training side of context-aware prompt tuning).

Roles (`cpt_tokens_type_mask` for the context, `input_type_mask` for the batch): 0 ignored, and for
example k >= 0: 4k+1 input template, 4k+2 input, 4k+3 output template, 4k+4 label. A batch's roles
are shifted past the context's largest one, so the context's examples come first.

    labels:  context token ids, then the batch's labels; -100 wherever the role is not a label (4k+4)
    loss  =  mean over label positions of  w * CE(logits[t-1], labels[t])
    w     =  1, or with "decay": factor ** (number of later examples in the sample)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def is_label_role(type_mask: torch.Tensor) -> torch.Tensor:
    return (type_mask > 0) & (type_mask % 4 == 0)


def cpt_labels_and_type_mask(
    config: Any, labels: torch.Tensor, input_type_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The labels and roles of context + batch, (batch, n_virtual + length) each.

    Without `input_type_mask` every batch token gets role 4 (shifted like the others). The caller's
    mask is not modified.
    """
    batch, length = labels.shape
    device = labels.device
    if input_type_mask is None:
        input_type_mask = torch.full((batch, length), 4, dtype=torch.long, device=device)
    input_type_mask = input_type_mask.to(device)
    context_roles = torch.tensor(config.cpt_tokens_type_mask, dtype=torch.long, device=device)
    shifted = torch.where(input_type_mask > 0, input_type_mask + context_roles.max(), input_type_mask)
    type_mask = torch.cat((context_roles.expand(batch, -1), shifted), dim=1)
    context_ids = torch.tensor(config.cpt_token_ids, dtype=torch.long, device=device)
    all_labels = torch.cat((context_ids.expand(batch, -1), labels.long()), dim=1)
    return all_labels.masked_fill(~is_label_role(type_mask), IGNORE_INDEX), type_mask


def _example_weights(type_mask: torch.Tensor, factor: float) -> torch.Tensor:
    """Per position: factor ** (label roles after this position's in the sample); 1 where not a label."""
    weights = torch.ones(type_mask.shape, dtype=torch.float32, device=type_mask.device)
    for row, roles in enumerate(type_mask):
        labelled = is_label_role(roles)
        if not labelled.any():
            continue
        kinds, rank = torch.unique(roles[labelled], return_inverse=True)  # ascending roles
        later = (kinds.numel() - 1 - rank).to(torch.float32)
        weights[row, labelled] = torch.pow(torch.tensor(float(factor), device=roles.device), later)
    return weights


def cpt_loss(
    logits: torch.Tensor, labels: torch.Tensor, type_mask: torch.Tensor, config: Any
) -> torch.Tensor:
    """CPT's (optionally decayed) next-token cross entropy over the label positions."""
    labels = labels.to(logits.device)
    type_mask = type_mask.to(logits.device)
    shift_logits, shift_labels = logits[..., :-1, :], labels[..., 1:]
    token_loss = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        reduction="none",
        ignore_index=IGNORE_INDEX,
    ).view(shift_labels.shape)
    valid = shift_labels != IGNORE_INDEX
    weights = valid.float()
    if config.opt_weighted_loss_type == "decay":
        weights = weights * _example_weights(type_mask[..., 1:], config.opt_loss_decay_factor)
    return (token_loss[valid] * weights[valid]).mean()
