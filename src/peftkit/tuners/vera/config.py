"""VeraConfig: the fields PEFT 0.21 writes for VeRA, with the same names and defaults."""

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

_VALID_BIAS = ("none", "all", "vera_only")


@dataclass
class VeraConfig(PeftConfig):
    """Configuration of a VeRA adapter (Kopiczko et al., 2024, "Vector-based Random Matrix Adaptation").

    `W x + Lambda_b B Lambda_d A x`: A (r x in) and B (out x r) are frozen random matrices shared by all
    layers (drawn from `projection_prng_key`), only the vectors `lambda_d` (r) and `lambda_b` (out) train.
    """

    r: int = field(default=256, metadata={"help": "Rank of the shared random projections."})
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    projection_prng_key: int = field(
        default=0, metadata={"help": "Seed of the generator that draws the shared projections A and B."}
    )
    save_projection: bool = field(
        default=True,
        metadata={"help": "Save A and B with the adapter (else they are re-drawn from projection_prng_key)."},
    )
    vera_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input."})
    d_initial: float = field(default=0.1, metadata={"help": "Initial value of every lambda_d entry."})
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "True for layers storing (in, out) weights."}
    )
    bias: str = field(default="none", metadata={"help": "Which biases train: 'none', 'all' or 'vera_only'."})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    init_weights: bool = field(
        default=True,
        metadata={
            "help": "lambda_b = 0 and lambda_d = d_initial (a no-op); False: lambda_b = 1, lambda_d random."
        },
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.VERA
        self.target_modules = as_set(self.target_modules)
        if not is_positive_int(self.r):
            raise ValueError(f"VeRA rank r must be a positive integer, got r={self.r!r}.")
        check_dropout(self, "vera_dropout")
        check_one_of(self, "bias", _VALID_BIAS)
        check_layers_pattern_has_indices(self)
        if not self.save_projection:
            warn_projections_not_saved(("vera_A", "vera_B"))
