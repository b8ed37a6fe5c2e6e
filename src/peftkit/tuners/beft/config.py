"""BeftConfig: the fields PEFT 0.21 writes for BEFT, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType


@dataclass
class BeftConfig(PeftConfig):
    """Configuration of BEFT (bias-efficient fine-tuning, arXiv 2509.15974): only a bias added to the
    output of the targeted projections (by default the attention values) trains.

    `y = W x + b + beta`, with `beta` (one value per output feature) starting at zero.
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    init_weights: bool = field(
        default=True, metadata={"help": "True: the bias starts at zero (a no-op); False: random normal."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.BEFT
        self.target_modules = as_set(self.target_modules)
