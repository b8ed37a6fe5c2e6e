"""OFTConfig: the fields PEFT 0.21 writes for OFT, with the same names and defaults."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from ...utils.warnings import PeftWarning
from .._config_checks import check_layers_pattern_has_indices

_VALID_BIAS = ("none", "all", "oft_only")


@dataclass
class OFTConfig(PeftConfig):
    """Configuration of an OFT adapter (orthogonal finetuning, Qiu et al., 2023; Liu et al., 2024 for the
    Cayley-Neumann form): the layer's input is rotated by a block-diagonal orthogonal matrix,
    `y = W (R x) + b`, `R = diag(R_1 .. R_r)`, each block the Cayley transform of a skew-symmetric
    `Q_i` (`r` blocks of size `oft_block_size`, `r * oft_block_size = in_features`; set one of the two).
    """

    r: int = field(
        default=0, metadata={"help": "Number of OFT blocks per layer (0: derive from oft_block_size)."}
    )
    oft_block_size: int = field(default=32, metadata={"help": "OFT block size (0: derive from r)."})
    module_dropout: float = field(
        default=0.0, metadata={"help": "Multiplicative dropout; accepted but not applied, as in peft 0.21."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "True for layers storing (in, out) weights."}
    )
    bias: Literal["none", "all", "oft_only"] = field(default="none", metadata={"help": "Which biases train."})
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    init_weights: bool = field(
        default=True, metadata={"help": "True: start at the identity (Q = 0); False: random Q."}
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    coft: bool = field(default=False, metadata={"help": "Constrained OFT: keep each Q within `eps` of 0."})
    eps: float = field(default=6e-5, metadata={"help": "COFT radius (only with coft=True)."})
    block_share: bool = field(default=False, metadata={"help": "One block shared by all r blocks."})
    use_cayley_neumann: bool = field(
        default=True, metadata={"help": "Approximate the Cayley inverse by a Neumann series."}
    )
    num_cayley_neumann_terms: int = field(default=5, metadata={"help": "Terms of the Neumann series."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.OFT
        self.target_modules = as_set(self.target_modules)
        self.exclude_modules = as_set(self.exclude_modules)
        check_layers_pattern_has_indices(self)
        if self.r == 0 and self.oft_block_size == 0:
            raise ValueError(
                f"Either `r` or `oft_block_size` must be non-zero. Currently, r = {self.r} and oft_block_size = "
                f"{self.oft_block_size}."
            )
        if self.r != 0 and self.oft_block_size != 0:
            raise ValueError(
                f"You can only specify either r ({self.r}) or oft_block_size ({self.oft_block_size}), but not both "
                "simultaneously, because r x oft_block_size == in_features."
            )
        if self.r < 0 or self.oft_block_size < 0:
            raise ValueError(
                f"r and oft_block_size must not be negative, got {self.r} and {self.oft_block_size}."
            )
        if self.bias not in _VALID_BIAS:
            raise ValueError(f"OFT bias must be one of {_VALID_BIAS}, got {self.bias!r}.")
        if self.num_cayley_neumann_terms < 1:
            raise ValueError(
                f"num_cayley_neumann_terms must be at least 1, got {self.num_cayley_neumann_terms}."
            )
        if self.module_dropout:
            warnings.warn(
                f"OFT module_dropout={self.module_dropout} has no effect: peft 0.21 does not apply it in the "
                "forward, and peftkit computes the same outputs.",
                PeftWarning,
            )
