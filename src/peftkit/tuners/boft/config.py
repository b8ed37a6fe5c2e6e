"""BOFTConfig: the fields PEFT 0.21 writes for BOFT, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from .._config_checks import check_layers_pattern_has_indices, is_positive_int

_VALID_BIAS = ("none", "all", "boft_only")


@dataclass
class BOFTConfig(PeftConfig):
    """Configuration of a BOFT adapter (orthogonal finetuning with butterfly factorisation, Liu et al., 2024):
    `W' = (W R) * s`, `R` block-diagonal orthogonal (Cayley blocks of size `boft_block_size`; set it or
    `boft_block_num`), `s` a learned scale per output channel.

    With `boft_n_butterfly_factor = m > 1`, `R` is a product of `m` butterfly factors (block-diagonal
    matrices whose blocks pair up features at growing strides), so few small blocks mix all features.
    (peft 0.21 honours `m` only where its CUDA extension loads; elsewhere it silently uses 1 factor and its
    adapters have a `boft_R` of shape `(1, ...)`. peftkit always honours `m`, and loads such files with
    the factors they hold, with a warning.)
    """

    boft_block_size: int = field(
        default=4, metadata={"help": "BOFT block size (0: derive from boft_block_num)."}
    )
    boft_block_num: int = field(
        default=0, metadata={"help": "Number of BOFT blocks (0: derive from block size)."}
    )
    boft_n_butterfly_factor: int = field(
        default=1, metadata={"help": "Number of butterfly factors (1: one block-diagonal matrix, as OFT)."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    boft_dropout: float = field(
        default=0.0, metadata={"help": "Training-time probability of replacing a block by the identity."}
    )
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "True for layers storing (in, out) weights."}
    )
    bias: str = field(default="none", metadata={"help": "Which biases train: 'none', 'all' or 'boft_only'."})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    init_weights: bool = field(
        default=True, metadata={"help": "True: start at the identity (R = I, s = 1); False: random."}
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.BOFT
        self.target_modules = as_set(self.target_modules)
        self.exclude_modules = as_set(self.exclude_modules)
        check_layers_pattern_has_indices(self)
        if self.boft_block_size == 0 and self.boft_block_num == 0:
            raise ValueError(
                f"Either `boft_block_size` or `boft_block_num` must be non-zero. Currently, boft_block_size = "
                f"{self.boft_block_size} and boft_block_num = {self.boft_block_num}."
            )
        if self.boft_block_size != 0 and self.boft_block_num != 0:
            raise ValueError(
                f"You can only specify either boft_block_size ({self.boft_block_size}) or boft_block_num "
                f"({self.boft_block_num}), but not both simultaneously, because boft_block_size x boft_block_num "
                "== in_features."
            )
        if self.bias not in _VALID_BIAS:
            raise ValueError(f"BOFT bias must be one of {_VALID_BIAS}, got {self.bias!r}.")
        if not 0.0 <= float(self.boft_dropout) <= 1.0:
            raise ValueError(f"boft_dropout must be a probability in [0, 1], got {self.boft_dropout!r}.")
        if not is_positive_int(self.boft_n_butterfly_factor):
            raise ValueError(
                f"boft_n_butterfly_factor must be a positive integer (1: one block-diagonal factor), got "
                f"{self.boft_n_butterfly_factor!r}."
            )
