"""LoKrConfig: the fields PEFT 0.21 writes for LoKr, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...config import as_set
from ...utils.peft_types import PeftType
from ..lycoris_utils import LycorisConfig


@dataclass
class LoKrConfig(LycorisConfig):
    """Configuration of a LoKr adapter (LyCORIS; Kronecker product of two factors):

    `dW = (alpha / r) * kron(W1, W2)`, the weight's rows and columns split as `out = l * k`, `in = m * n`
    (`W1: (l, m)`, `W2: (k, n)`, the split chosen by `decompose_factor`). `W2` (and with `decompose_both`
    also `W1`) is itself low-rank (`A @ B`) when `r` is below half its larger side.
    """

    r: int = field(default=8, metadata={"help": "LoKr rank (of the low-rank Kronecker factors)."})
    alpha: int = field(default=8, metadata={"help": "LoKr alpha (the delta is scaled by alpha / r)."})
    rank_dropout: float = field(
        default=0.0, metadata={"help": "Dropout probability of each output row of the delta during training."}
    )
    module_dropout: float = field(
        default=0.0, metadata={"help": "Probability of skipping the whole adapter for a training step."}
    )
    use_effective_conv2d: bool = field(
        default=False, metadata={"help": "Tucker-factorised W2 for Conv1d/Conv2d with kernel > 1."}
    )
    decompose_both: bool = field(default=False, metadata={"help": "Make W1 low-rank too."})
    decompose_factor: int = field(
        default=-1, metadata={"help": "Kronecker split factor of the dimensions; -1: as square as possible."}
    )
    rank_dropout_scale: bool = field(
        default=False, metadata={"help": "Rescale the rows kept by rank dropout by 1 / mean(kept)."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    init_weights: bool | Literal["lycoris"] = field(
        default=True,
        metadata={"help": "True: W1 starts at zero; 'lycoris': W2 starts at zero; False: all random."},
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.LOKR
        self.target_modules = as_set(self.target_modules)
        self.exclude_modules = as_set(self.exclude_modules)
        self._validate_lycoris("LoKr")
        if self.init_weights not in (True, False, "lycoris"):
            raise ValueError(
                f"LoKr init_weights must be True, False or 'lycoris', got {self.init_weights!r}."
            )
