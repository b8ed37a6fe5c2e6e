"""PveraConfig: the fields PEFT 0.21 writes for PVeRA, with the same names and defaults."""

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

_VALID_BIAS = ("none", "all", "pvera_only")


@dataclass
class PveraConfig(PeftConfig):
    """Configuration of PVeRA (probabilistic VeRA, arXiv 2512.07703).

    Like VeRA, frozen random projections A (2r x in) and B (out x r) are shared by all layers and only the
    vectors `lambda_d` (2r) and `lambda_b` (out) train; the first r rows of `lambda_d * A x` are a mean, the
    last r a log-variance, sampled from in training (and with `sample_at_inference`), the mean otherwise.
    """

    r: int = field(default=256, metadata={"help": "Rank of the shared random projections (A has 2r rows)."})
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
    pvera_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input."})
    d_initial: float = field(default=0.1, metadata={"help": "Initial value of every lambda_d entry."})
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "True for layers storing (in, out) weights."}
    )
    bias: str = field(default="none", metadata={"help": "Which biases train: 'none', 'all' or 'pvera_only'."})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    init_weights: bool = field(
        default=True,
        metadata={
            "help": "lambda_b = 0 and lambda_d = d_initial (a no-op); False: lambda_b = 1, lambda_d random."
        },
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})
    sample_at_inference: bool = field(
        default=False, metadata={"help": "Sample in eval mode too (else the mean is used outside training)."}
    )
    generator_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of each layer's own sampling generator (None: torch's global RNG)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.PVERA
        self.target_modules = as_set(self.target_modules)
        if not is_positive_int(self.r):
            raise ValueError(f"PVeRA rank r must be a positive integer, got r={self.r!r}.")
        check_dropout(self, "pvera_dropout")
        check_one_of(self, "bias", _VALID_BIAS)
        check_layers_pattern_has_indices(self)
        if not self.save_projection:
            warn_projections_not_saved(("pvera_A", "pvera_B"))
