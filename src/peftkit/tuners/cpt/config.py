"""CPTConfig: the fields PEFT 0.21 writes for CPT, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...config import PromptLearningConfig
from ...utils.peft_types import PeftType, TaskType

_LOSS_TYPES = ("none", "decay")


@dataclass
class CPTConfig(PromptLearningConfig):
    """Configuration of context-aware prompt tuning (Blau et al., 2024, "Context-aware Prompt Tuning").

    The virtual tokens are the embeddings of a few-shot context (`cpt_token_ids`) plus a trained change
    that is projected back into a small ball around them after every step. `cpt_tokens_type_mask` gives
    each context token its role: 0 ignored, and per example k >= 0, 4k+1 input template, 4k+2 input, 4k+3
    output template, 4k+4 label. Only template and input tokens change; label tokens are what the loss
    is computed on (with `opt_weighted_loss_type="decay"`, earlier examples weigh less).
    """

    cpt_token_ids: list[int] | None = field(
        default=None, metadata={"help": "Token ids of the context that initialises the virtual tokens."}
    )
    cpt_mask: list[int] | None = field(default=None, metadata={"help": "Mask of the context tokens."})
    cpt_tokens_type_mask: list[int] | None = field(
        default=None, metadata={"help": "Role of each context token (see the class docstring)."}
    )
    opt_weighted_loss_type: Literal["none", "decay"] | None = field(
        default="none", metadata={"help": "'none': plain mean loss; 'decay': earlier examples weigh less."}
    )
    opt_loss_decay_factor: float | None = field(
        default=1.0, metadata={"help": "Weight ratio between an example's loss and the next one's ('decay')."}
    )
    opt_projection_epsilon: float | None = field(
        default=0.1, metadata={"help": "Radius of the ball the input tokens' change is projected onto."}
    )
    opt_projection_format_epsilon: float | None = field(
        default=0.1, metadata={"help": "Radius of the ball the template tokens' change is projected onto."}
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "The tokenizer of the base model (recorded, as PEFT records it)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.CPT
        if self.task_type != TaskType.CAUSAL_LM:
            raise ValueError(
                f"{type(self).__name__} only supports task_type = {TaskType.CAUSAL_LM.value}, got {self.task_type!r}."
            )
        # the model's sizes are read from the model each time the adapter is created (as PEFT does)
        self.num_layers = None
        self.token_dim = None
        self.num_attention_heads = None
        self.num_transformer_submodules = 1
        if self.cpt_token_ids is None:
            self.cpt_token_ids = [0]
        self.num_virtual_tokens = len(self.cpt_token_ids)
        if self.cpt_mask is None:
            self.cpt_mask = [1] * self.num_virtual_tokens
        if self.cpt_tokens_type_mask is None:
            self.cpt_tokens_type_mask = [1] * self.num_virtual_tokens
        if not len(self.cpt_token_ids) == len(self.cpt_mask) == len(self.cpt_tokens_type_mask):
            raise ValueError(
                "cpt_token_ids, cpt_mask and cpt_tokens_type_mask must have the same length, got "
                f"{len(self.cpt_token_ids)}, {len(self.cpt_mask)} and {len(self.cpt_tokens_type_mask)}."
            )
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in self.cpt_tokens_type_mask):
            raise ValueError(
                f"cpt_tokens_type_mask must hold non-negative integers (token roles), got {self.cpt_tokens_type_mask}."
            )
        if self.opt_weighted_loss_type not in _LOSS_TYPES:
            raise ValueError(
                f"opt_weighted_loss_type must be one of {_LOSS_TYPES}, got {self.opt_weighted_loss_type!r}."
            )
