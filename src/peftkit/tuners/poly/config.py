"""PolyConfig: the fields PEFT 0.21 writes for Poly, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType

_POLY_TYPES = ("poly",)


def _positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


@dataclass
class PolyConfig(PeftConfig):
    """Configuration of Poly (Ponti et al., 2022, "Combining Modular Skills in Multitask Learning"; with
    `n_splits > 1`, Multi-Head Routing, Caccia et al., 2022).

    Each adapted layer holds a bank of `n_skills` LoRA pairs (of rank `r`); a learned router gives every task
    a soft choice of skills, and a sample's adapter is the mixture its task (`task_ids`) selects.
    """

    r: int = field(default=8, metadata={"help": "Rank of each skill's LoRA pair."})
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    init_weights: bool = field(
        default=True,
        metadata={"help": "B = 0 (the adapter starts as a no-op); False: B drawn like A (Kaiming uniform)."},
    )
    poly_type: Literal["poly"] = field(default="poly", metadata={"help": "The router type; only 'poly'."})
    n_tasks: int = field(default=1, metadata={"help": "Number of tasks (task_ids range over 0..n_tasks-1)."})
    n_skills: int = field(default=4, metadata={"help": "Number of skills (LoRA pairs) per layer."})
    n_splits: int = field(
        default=1,
        metadata={"help": "Splits per skill; above 1, Multi-Head Routing (each split routed alone)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.POLY
        self.target_modules = as_set(self.target_modules)
        self.exclude_modules = as_set(self.exclude_modules)
        for name in ("r", "n_tasks", "n_skills", "n_splits"):
            _positive_int(getattr(self, name), name)
        if self.poly_type not in _POLY_TYPES:
            raise ValueError(f"poly_type must be one of {_POLY_TYPES}, got {self.poly_type!r}.")
