"""MissConfig: the fields PEFT 0.21 writes for MiSS, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from .._config_checks import check_no_layer_selection_with_regex, is_positive_int


@dataclass
class MissConfig(PeftConfig):
    """Configuration of MiSS (Kang et al., 2024, "MiSS: Balancing LoRA Performance and Efficiency with Simple
    Shard Sharing"): one small trained shard is shared by every shard of the weight.

    `init_weights` picks the variant: True ("balance", the default; False starts it random instead of at
    zero), "bat" (a block-wise update that depends on the weight) or "mini" (a shard of `r x mini_r`
    repeated along the outputs, for even fewer parameters).
    """

    r: int = field(
        default=64,
        metadata={
            "help": "The shard size along in_features (best even); for 'bat' the size of the square blocks.",
        },
    )
    miss_dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the adapter's input (0 <= p <= 1)."}
    )
    mini_r: int = field(
        default=1,
        metadata={
            "help": "For init_weights='mini': the shard size along out_features (out_features % mini_r == 0)."
        },
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    init_weights: bool | Literal["bat", "mini"] = field(
        default=True,
        metadata={
            "help": "True: MiSS balance, starting at zero (False: starting random); 'bat': block-wise updates that "
            "depend on the weight; 'mini': a smaller shard (see mini_r)."
        },
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: str | None = field(default=None, metadata={"help": "Name of the layer list."})
    bias: str = field(default="none", metadata={"help": "Which biases train: 'none', 'all' or 'MiSS_only'."})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.MISS
        self.target_modules = as_set(self.target_modules)
        self.exclude_modules = as_set(self.exclude_modules)
        check_no_layer_selection_with_regex(self)
        if not is_positive_int(self.r):
            raise ValueError(f"`r` should be a positive integer value, got {self.r!r}.")
        if not is_positive_int(self.mini_r):
            raise ValueError(f"`mini_r` should be a positive integer value, got {self.mini_r!r}.")
        if not (isinstance(self.miss_dropout, (int, float)) and 0.0 <= self.miss_dropout <= 1.0):
            raise ValueError(
                f"`miss_dropout` must be a probability between 0 and 1, got {self.miss_dropout!r}."
            )
        if not (isinstance(self.init_weights, bool) or self.init_weights in ("bat", "mini")):
            raise ValueError(
                f"`init_weights` must be one of True, False, 'bat' or 'mini', got {self.init_weights!r}."
            )
        if self.bias not in ("none", "all") and not str(self.bias).endswith("_only"):
            raise ValueError(f"`bias` must be 'none', 'all' or 'MiSS_only', got {self.bias!r}.")
