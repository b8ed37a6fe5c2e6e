"""DeftConfig: the fields PEFT 0.21 writes for DEFT, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from .._config_checks import (
    check_layer_selection,
    check_one_of,
    is_positive_int,
)

DECOMPOSITION_METHODS = ("qr", "relu")
BIAS_CHOICES = ("none", "all", "deft_only")


@dataclass
class DeftConfig(PeftConfig):
    """Configuration of DEFT (Decompositional Efficient Fine-Tuning): a rank-r sub-space of each weight is
    projected out and replaced by a trained injection.

    `W' = (I - P_proj) W + Q_P (s R)`, with `P` (out x r) and `R` (r x in) trained, `s = alpha / r` (1 when
    `alpha` is None). `decomposition_method="relu"`: `Q_P = P`, `P_proj = P relu(P)^T`; `"qr"`: `Q_P` the
    orthonormal factor of `P`, `P_proj = Q_P Q_P^T`. `init_weights=True` picks `R` so that `W' = W` at the
    start; `para=True` (PaRa) keeps only the removal, `W' = (I - P_proj) W`, with no `R`.
    """

    r: int = field(default=8, metadata={"help": "Rank of the projection P and the injection R."})
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    decomposition_method: Literal["relu", "qr"] = field(
        default="relu",
        metadata={"help": "How P_proj comes from P: 'relu' (P relu(P)^T) or 'qr' (orthogonal Q_P Q_P^T)."},
    )
    init_scale: float = field(
        default=1.0, metadata={"help": "Scale of the std of R's random init (init_weights=False only)."}
    )
    alpha: int | None = field(
        default=None,
        metadata={
            "help": "The injection is scaled by alpha / r (None: by 1); the removal term is not scaled."
        },
    )
    para: bool = field(
        default=False,
        metadata={"help": "PaRa: pure sub-space removal (W' = (I - P_proj) W), no injection matrix R."},
    )
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "True for layers storing (in, out) weights (GPT-2's Conv1D)."}
    )
    deft_dropout: float = field(default=0.0, metadata={"help": "Dropout probability on the layer input."})
    init_weights: bool = field(
        default=True,
        metadata={
            "help": "True: R chosen so the adapter starts as a no-op; False: R ~ N(0, (0.02 init_scale)^2)."
        },
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})
    bias: str = field(default="none", metadata={"help": "Which biases train: 'none', 'all' or 'deft_only'."})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.DEFT
        self.target_modules = as_set(self.target_modules)
        self.exclude_modules = as_set(self.exclude_modules)
        if self.decomposition_method not in DECOMPOSITION_METHODS:
            raise ValueError(
                f"Unknown decomposition_method '{self.decomposition_method}', must be one of "
                f"{sorted(DECOMPOSITION_METHODS)}."
            )
        if not is_positive_int(self.r):
            raise ValueError(f"`r` should be a positive integer value, got {self.r!r}.")
        if not 0.0 <= self.deft_dropout < 1.0:
            raise ValueError(f"`deft_dropout` must be in [0, 1), got {self.deft_dropout!r}.")
        check_one_of(self, "bias", BIAS_CHOICES)
        check_layer_selection(self)
