"""OSFConfig: the fields PEFT 0.21 writes for OSF, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType


def check_rank_value(value: object, where: str) -> None:
    """An effective rank is None (half the layer's smaller dimension), a positive integer, or a fraction in
    (0, 1] of the smaller dimension; anything else fails when the layers are built, so it fails here."""
    if value is None:
        return
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or value <= 0:
        raise ValueError(
            f"{where} must be None, a positive integer or a fraction in (0, 1] of the layer's smaller dimension, "
            f"got {value!r}."
        )


@dataclass
class OSFConfig(PeftConfig):
    """Configuration of Orthogonal Subspace Fine-tuning (OSF) on `nn.Linear` layers.

    Each weight is split by its SVD, `W = U_high S_high V_high^T + U_low S_low V_low^T`: the top
    `effective_rank` singular directions are frozen, the remaining ones (U_low, S_low, V_low) train, and the
    gradients of U_low and V_low are projected orthogonally to the frozen subspace.
    """

    effective_rank: int | float | None = field(
        default=None,
        metadata={
            "help": "Frozen (top) singular directions per layer: an integer, a fraction in (0, 1] of the smaller "
            "weight dimension, or None for half of it. The trained rank is min(weight.shape) - effective_rank."
        },
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    rank_pattern: dict[str, int | float] | None = field(
        default=None,
        metadata={
            "help": "Regex (searched in the module name, first match wins) -> effective_rank for those modules."
        },
    )
    init_weights: bool | None = field(
        default=True,
        metadata={
            "help": "True: the trained factors start as the weight's own low singular factors (a no-op); False: "
            "random (for tests)."
        },
    )
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    target_svd_config: dict[str, int] | None = field(
        default=None, metadata={"help": "Accepted for compatibility with PEFT; OSF does not use it."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.OSF
        self.target_modules = as_set(self.target_modules)
        check_rank_value(self.effective_rank, "effective_rank")
        for pattern, value in (self.rank_pattern or {}).items():
            check_rank_value(value, f"rank_pattern[{pattern!r}]")
