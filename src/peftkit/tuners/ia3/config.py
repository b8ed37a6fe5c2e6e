"""IA3Config: the fields PEFT 0.21 writes for IA3, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType


@dataclass
class IA3Config(PeftConfig):
    """Configuration of an IA3 adapter (Liu et al., 2022, "(IA)^3"): learned vectors rescale activations.

    On a targeted layer `y = l * (W x + b)` (the output is scaled); on a feed-forward layer
    (`feedforward_modules`) `y = W (l * x) + b` (the input is scaled). `l` starts at ones.
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    feedforward_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Targets whose input (not output) is scaled; a subset of target_modules."},
    )
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "True for layers storing (in, out) weights."}
    )
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    init_ia3_weights: bool = field(
        default=True, metadata={"help": "Start the vectors at ones (identity); False: random normal."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.IA3
        self.target_modules = as_set(self.target_modules)
        self.exclude_modules = as_set(self.exclude_modules)
        self.feedforward_modules = as_set(self.feedforward_modules)
        both_sets = isinstance(self.target_modules, set) and isinstance(self.feedforward_modules, set)
        if both_sets and not self.feedforward_modules <= self.target_modules:
            extra = sorted(self.feedforward_modules - self.target_modules)
            raise ValueError(
                f"`feedforward_modules` should be a subset of `target_modules`: {extra} are not targeted. Add them "
                "to target_modules or remove them from feedforward_modules."
            )
