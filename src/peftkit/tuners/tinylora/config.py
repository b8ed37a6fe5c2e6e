"""TinyLoraConfig: the fields PEFT 0.21 writes for TinyLoRA, with the same names and defaults."""

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

_VALID_BIAS = ("none", "all", "tinylora_only")
_VALID_INIT = (True, False, "uniform")


@dataclass
class TinyLoraConfig(PeftConfig):
    """Configuration of a TinyLoRA adapter ("Learning to Reason in 13 Parameters", arXiv:2602.04118).

    `W x + B (sum_i v_i P_i) A x`: A (r x in) and B (out x r) are the frozen truncated SVD of the base
    weight, `P_i` (u of them, r x r) fixed random matrices drawn from `projection_seed`, and only the vector
    `v` (u numbers) trains. `weight_tying` lets groups of layers share one `v`.
    """

    r: int = field(default=2, metadata={"help": "Rank of the frozen truncated SVD of each base weight."})
    u: int = field(default=64, metadata={"help": "Length of the trained vector v (per group of layers)."})
    weight_tying: float = field(
        default=0.0,
        metadata={"help": "Share of layers tied to one v, from 0.0 (one v per layer) to 1.0 (one v in all)."},
    )
    projection_seed: int = field(
        default=42, metadata={"help": "Seed of the fixed random matrices P (per layer: seed + layer index)."}
    )
    save_projection: bool = field(
        default=True,
        metadata={"help": "Save P with the adapter (else they are re-drawn from projection_seed on load)."},
    )
    init_v_bound: float = field(
        default=0.02, metadata={"help": "init_weights='uniform' draws v from U(-init_v_bound, init_v_bound)."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    tinylora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input."})
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "True for layers storing (in, out) weights."}
    )
    bias: str = field(
        default="none", metadata={"help": "Which biases train: 'none', 'all' or 'tinylora_only'."}
    )
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    init_weights: bool | str = field(
        default=True,
        metadata={"help": "True: v = 0 (a no-op); 'uniform': v random; False: v left uninitialised."},
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.TINYLORA
        self.target_modules = as_set(self.target_modules)
        check_layers_pattern_has_indices(self)
        if not is_positive_int(self.r):
            raise ValueError(f"`r` should be a positive integer value but the value passed is {self.r}")
        if not is_positive_int(self.u):
            raise ValueError(f"`u` should be a positive integer value but the value passed is {self.u}")
        if not 0.0 <= self.weight_tying <= 1.0:
            raise ValueError(
                f"`weight_tying` should be a float between 0.0 and 1.0 but the value passed is {self.weight_tying}"
            )
        check_dropout(self, "tinylora_dropout")
        check_one_of(self, "bias", _VALID_BIAS)
        # peft leaves v uninitialised for any value but True and "uniform": a typo would train from garbage
        if not (isinstance(self.init_weights, bool) or self.init_weights == "uniform"):
            raise ValueError(f"init_weights must be one of {_VALID_INIT}, got {self.init_weights!r}.")
        if not self.save_projection:
            warn_projections_not_saved(("tinylora_P",), "projection_seed")
