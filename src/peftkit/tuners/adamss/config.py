"""AdamssConfig: the fields PEFT 0.21 writes for AdaMSS, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from .._config_checks import is_positive_int


@dataclass
class AdamssConfig(PeftConfig):
    """Configuration of AdaMSS (adaptive multi-subspace fine-tuning): the layer's weight (with its bias as
    an extra column) is decomposed by a rank-`r` SVD, the output rows are clustered into `num_subspaces`
    groups by their left singular vectors, and each group learns a rank-`subspace_rank` update inside the
    right singular space (see `tuners/adamss/layer.py` for the formula).

    With `use_asa`, adaptive subspace allocation freezes the least important subspaces between
    `init_warmup` and `final_warmup` steps, down to `asa_target_subspaces` in the whole model; it runs from
    `AdamssModel.update_and_allocate` (or the Trainer callback `AdamssAsaCallback`).

    Unlike PEFT, peftkit needs no scikit-learn: its k-means reproduces scikit-learn's clustering.
    """

    r: int = field(
        default=100, metadata={"help": "Rank R of the SVD of the weight (clamped to its dimensions)."}
    )
    num_subspaces: int = field(
        default=5, metadata={"help": "Number of subspaces K the output rows are clustered into."}
    )
    subspace_rank: int = field(default=1, metadata={"help": "Rank r_k of each subspace's trained update."})
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    init_weights: Literal["orthogonal"] | None = field(
        default="orthogonal",
        metadata={
            "help": "'orthogonal': B = 0, the adapter starts as a no-op; None (or False): small random B."
        },
    )
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})
    use_asa: bool = field(
        default=False, metadata={"help": "Adaptive subspace allocation (prunes subspaces)."}
    )
    asa_target_subspaces: int = field(
        default=50, metadata={"help": "Trainable subspaces left in the whole model after ASA's ramp."}
    )
    init_warmup: int = field(default=50, metadata={"help": "Step at which ASA starts scoring and pruning."})
    final_warmup: int = field(
        default=1000, metadata={"help": "Step at which ASA reaches asa_target_subspaces."}
    )
    mask_interval: int = field(default=100, metadata={"help": "Steps between two ASA maskings."})
    asa_importance_beta: float = field(
        default=0.85, metadata={"help": "EMA coefficient of the importance scores."}
    )
    asa_uncertainty_beta: float = field(
        default=0.85, metadata={"help": "EMA coefficient of their uncertainty."}
    )
    asa_schedule_exponent: float = field(
        default=3.0,
        metadata={
            "help": "Trainable = target + (total - target) * (1 - progress) ** exponent during the ramp."
        },
    )
    use_dynamic_rank: bool = field(
        default=False,
        metadata={"help": "Each subspace's rank from its singular values (at most subspace_rank)."},
    )
    svd_threshold: float = field(
        default=0.1,
        metadata={"help": "With use_dynamic_rank: singular values above this times the largest count."},
    )
    random_seed: int = field(
        default=0,
        metadata={"help": "Seed of the randomised SVD, so that a loaded adapter finds the same subspaces."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.ADAMSS
        self.target_modules = as_set(self.target_modules)
        if self.init_weights is False:  # PEFT's spelling of "no initialisation" before None
            self.init_weights = None
        if self.init_weights not in ("orthogonal", None):
            raise ValueError(f"init_weights must be 'orthogonal' or None, got {self.init_weights!r}.")
        for name in ("r", "num_subspaces", "subspace_rank"):
            if not is_positive_int(getattr(self, name)):
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)!r}.")
        if self.use_asa:
            self._check_asa()

    def _check_asa(self) -> None:
        if self.mask_interval <= 0:
            raise ValueError(
                f"`mask_interval` must be a positive integer when `use_asa=True`, got {self.mask_interval}."
            )
        if self.init_warmup >= self.final_warmup:
            raise ValueError(
                "`init_warmup` must be smaller than `final_warmup` when `use_asa=True` so that ASA has a pruning "
                f"ramp, got init_warmup={self.init_warmup} and final_warmup={self.final_warmup}."
            )
        if self.asa_target_subspaces <= 0:
            raise ValueError(
                f"`asa_target_subspaces` must be a positive integer when `use_asa=True`, got {self.asa_target_subspaces}."
            )
        if self.asa_schedule_exponent <= 0:
            raise ValueError(
                "`asa_schedule_exponent` must be a positive number when `use_asa=True`, got "
                f"{self.asa_schedule_exponent}."
            )
