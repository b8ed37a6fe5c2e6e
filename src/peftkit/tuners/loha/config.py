"""LoHaConfig: the fields PEFT 0.21 writes for LoHa, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import as_set
from ...utils.peft_types import PeftType
from ..lycoris_utils import LycorisConfig


@dataclass
class LoHaConfig(LycorisConfig):
    """Configuration of a LoHa adapter (LyCORIS; Hadamard product of two low-rank matrices, FedPara):

    `dW = (alpha / r) * (W1a @ W1b) * (W2a @ W2b)` (elementwise product), added to the targeted layer's
    weight. With `use_effective_conv2d`, a convolution with kernel > 1 uses the Tucker form of each
    factor (a `(r, r, k, k)` core between the two projections).
    """

    r: int = field(default=8, metadata={"help": "LoHa rank."})
    alpha: int = field(default=8, metadata={"help": "LoHa alpha (the delta is scaled by alpha / r)."})
    rank_dropout: float = field(
        default=0.0, metadata={"help": "Dropout probability of each output row of the delta during training."}
    )
    module_dropout: float = field(
        default=0.0, metadata={"help": "Probability of skipping the whole adapter for a training step."}
    )
    use_effective_conv2d: bool = field(
        default=False, metadata={"help": "Tucker-factorised conv kernels (Conv1d/Conv2d with kernel > 1)."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    init_weights: bool = field(
        default=True,
        metadata={"help": "True: the delta starts at zero (W2b = 0); False: all factors random."},
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.LOHA
        self.target_modules = as_set(self.target_modules)
        self.exclude_modules = as_set(self.exclude_modules)
        self._validate_lycoris("LoHa")
        if not isinstance(self.init_weights, bool):
            raise ValueError(f"LoHa init_weights must be True or False, got {self.init_weights!r}.")
