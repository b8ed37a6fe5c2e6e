"""C3AConfig: the fields PEFT 0.21 writes for C3A, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from .._config_checks import (
    check_no_layer_selection_with_regex,
    check_one_of,
    is_positive_int,
)

_VALID_BIAS = ("none", "all", "c3a_only")
_VALID_INIT = (True, False, "gaussian", "kaiming_uniform", "xavier_uniform")


@dataclass
class C3AConfig(PeftConfig):
    """Configuration of C3A (Chen et al., 2024, "Parameter-Efficient Fine-Tuning via Circular Convolution").

    The weight change is a block matrix of circulant blocks: every (block_size x block_size) block is the
    circular shift matrix of one trained vector, so a layer trains `in * out / block_size` numbers.
    `block_size` must divide both the input and the output size of every targeted layer.
    """

    block_size: int = field(
        default=256,
        metadata={
            "help": "Size of the circulant blocks; divides every target's input and output size (their gcd is a "
            "safe choice). Larger blocks mean fewer parameters."
        },
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    bias: str = field(default="none", metadata={"help": "Which biases train: 'none', 'all' or 'c3a_only'."})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})
    block_size_pattern: dict | None = field(
        default_factory=dict, metadata={"help": "Regex -> block_size overrides per module."}
    )
    init_weights: bool | Literal["gaussian", "kaiming_uniform", "xavier_uniform"] | None = field(
        default="xavier_uniform",
        metadata={
            "help": "Kernel init: 'xavier_uniform' (default, also for False), 'kaiming_uniform', 'gaussian', "
            "or True for zeros (C3A starts as a no-op)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.C3A
        self.target_modules = as_set(self.target_modules)
        if not is_positive_int(self.block_size):
            raise ValueError(f"block_size must be a positive integer, got {self.block_size!r}.")
        check_one_of(self, "bias", _VALID_BIAS)
        if not any(
            self.init_weights is v if isinstance(v, bool) else self.init_weights == v for v in _VALID_INIT
        ):
            raise ValueError(
                f"init_weights must be one of {_VALID_INIT} (True: zeros, a no-op adapter), got {self.init_weights!r}."
            )
        check_no_layer_selection_with_regex(self)
