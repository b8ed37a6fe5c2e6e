"""DeloraConfig: the fields PEFT 0.21 writes for DeLoRA, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from .._config_checks import check_layers_pattern_has_indices, is_positive_int


@dataclass
class DeloraConfig(PeftConfig):
    """Configuration of DeLoRA (Bini et al., 2025, "Decoupling Angles and Strength in Low-rank Adaptation"):
    a low-rank update whose r components are each normalised, so its strength is set by one trained
    boundary `delora_lambda` (the Frobenius norm of the update is at most lambda times the weight's
    column norms), decoupled from its direction.
    """

    r: int = field(default=8, metadata={"help": "DeLoRA rank."})
    delora_lambda: int = field(
        default=15,
        metadata={
            "help": "Initial value of the trained boundary of the update's norm (it keeps the fine-tuned model "
            "close to the base model)."
        },
    )
    module_dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the adapter's input during training."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    bias: Literal["none", "all", "delora_only"] = field(
        default="none", metadata={"help": "Which biases train: 'none', 'all' or 'delora_only'."}
    )
    init_weights: bool = field(
        default=True,
        metadata={
            "help": "True: A kaiming-uniform, B zero (a no-op adapter); False: both random, for tests."
        },
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})
    rank_pattern: dict | None = field(
        default_factory=dict, metadata={"help": "Regex -> rank overrides per module."}
    )
    lambda_pattern: dict | None = field(
        default_factory=dict, metadata={"help": "Regex -> delora_lambda overrides per module."}
    )
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.DELORA
        self.target_modules = as_set(self.target_modules)
        self.exclude_modules = as_set(self.exclude_modules)
        # peft checks only this half of the regex rule for DeLoRA (a regex with layers_pattern alone is
        # refused by the pattern rule below instead)
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError("`layers_to_transform` cannot be used when `target_modules` is a str.")
        check_layers_pattern_has_indices(self)
        if not is_positive_int(self.r):
            raise ValueError(f"`r` must be a positive integer; got {self.r!r}.")
        bad_ranks = {k: v for k, v in (self.rank_pattern or {}).items() if not is_positive_int(v)}
        if bad_ranks:
            raise ValueError(f"`rank_pattern` values must be positive integers; got {bad_ranks}.")
        if not (isinstance(self.module_dropout, (int, float)) and 0.0 <= self.module_dropout <= 1.0):
            raise ValueError(
                f"`module_dropout` must be a probability between 0 and 1, got {self.module_dropout!r}."
            )
        if self.bias not in ("none", "all", "delora_only"):
            raise ValueError(f"`bias` must be one of 'none', 'all' or 'delora_only', got {self.bias!r}.")
