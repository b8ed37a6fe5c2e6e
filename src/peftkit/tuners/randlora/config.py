"""RandLoraConfig: the fields PEFT 0.21 writes for RandLoRA, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from .._config_checks import (
    check_dropout,
    check_layers_pattern_has_indices,
    check_one_of,
    is_positive_int,
    warn_projections_not_saved,
)

_VALID_BIAS = ("none", "all", "randlora_only")


@dataclass
class RandLoraConfig(PeftConfig):
    """Configuration of a RandLoRA adapter (Albert et al., 2025, "RandLoRA: full-rank parameter-efficient
    fine-tuning of large models").

    `W x + s * sum_n B_n diag(lambda_n) A diag(gamma_n) x`: a full-rank update built from `ceil(min(in,
    out) / r)` frozen random rank-r bases (drawn from `projection_prng_key`, shared by all layers), each
    scaled by trained diagonal matrices. A smaller `r` means more bases, hence more trained numbers.
    """

    r: int = field(
        default=32, metadata={"help": "Rank of each random basis (more trained numbers when smaller)."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    projection_prng_key: int = field(
        default=0, metadata={"help": "Seed of the generator that draws the shared random bases."}
    )
    save_projection: bool = field(
        default=True,
        metadata={
            "help": "Save the bases with the adapter (else they are re-drawn from projection_prng_key)."
        },
    )
    sparse: bool = field(
        default=False,
        metadata={"help": "Ternary bases (-1, 0, 1 with probabilities 1/6, 2/3, 1/6), scaled to unit std."},
    )
    very_sparse: bool = field(
        default=False,
        metadata={"help": "Sparser ternary bases (-1 and 1 each with probability 1/(2 sqrt(D)))."},
    )
    randlora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input."})
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "True for layers storing (in, out) weights."}
    )
    randlora_alpha: int = field(
        default=640, metadata={"help": "Scaling numerator (scale = randlora_alpha / r), typically 20 r."}
    )
    bias: str = field(
        default="none", metadata={"help": "Which biases train: 'none', 'all' or 'randlora_only'."}
    )
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    init_weights: bool = field(
        default=True,
        metadata={"help": "True: lambda = 0 (a no-op), gamma constant; False: lambda random."},
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: str | None = field(default=None, metadata={"help": "Name of the layer list."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.RANDLORA
        self.target_modules = as_set(self.target_modules)
        if not is_positive_int(self.r):
            raise ValueError(f"`r` should be a positive integer value but the value passed is {self.r!r}")
        check_dropout(self, "randlora_dropout")
        check_one_of(self, "bias", _VALID_BIAS)
        check_layers_pattern_has_indices(self)
        if not self.save_projection:
            warn_projections_not_saved(("randlora_A", "randlora_B"))
