"""SupertuningConfig: the fields PEFT 0.21 writes for Super-Tuning, with the same names and defaults."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from .._config_checks import is_positive_int


@dataclass
class SupertuningConfig(PeftConfig):
    """Configuration of Super-Tuning (arXiv:2607.09287): the base weight is frozen and only a sparse set of
    its entries, chosen by magnitude, trains; `r` adds a LoRA branch beside them (the paper's "Supra").

    `W' = W + S (+ (lora_alpha / r) B A)`, S zero except at the `int(numel * (1 - sparsity))` entries of
    largest (`select_top=True`) or smallest |W|.
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Module names (exact or dotted suffix) or one regex string; None: per-model default."
        },
    )
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    sparsity: float = field(
        default=0.99, metadata={"help": "Fraction of weight entries left frozen, in [0, 1)."}
    )
    select_top: bool = field(
        default=True, metadata={"help": "True: train the largest-magnitude entries; False: the smallest."}
    )
    r: int | None = field(default=None, metadata={"help": "Rank of the Supra LoRA branch (None: no branch)."})
    lora_alpha: float | None = field(
        default=None, metadata={"help": "LoRA scaling alpha of the branch (default 2 * r; only with r)."}
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch's input."})
    init_weights: bool = field(
        default=True,
        metadata={"help": "True: sparse values and LoRA B start at zero (a no-op); False: random."},
    )
    save_precomputed_indices: bool = field(
        default=True,
        metadata={"help": "Save the sparse positions; False: recompute them from the base weight on load."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.SUPERTUNING
        self.target_modules = as_set(self.target_modules)
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0.0, 1.0), got {self.sparsity}")
        if self.r is not None:
            if not is_positive_int(self.r):
                raise ValueError(f"r must be a positive integer or None, got {self.r!r}")
            if self.lora_alpha is None:
                self.lora_alpha = 2 * self.r
        elif self.lora_alpha is not None:
            raise ValueError("lora_alpha is set but r is None — Supra mode requires an explicit r.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0.0, 1.0), got {self.lora_dropout}")
        if not self.save_precomputed_indices:
            warnings.warn(
                "save_precomputed_indices=False: sparse-support indices will be recomputed from base weight "
                "magnitudes at load time. This assumes the base model is identical to training time; "
                "numerical drift can cause topk tie-breaks to differ."
            )
