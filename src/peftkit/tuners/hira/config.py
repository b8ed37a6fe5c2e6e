"""HiraConfig: the fields PEFT 0.21 writes for HiRA, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from .._config_checks import check_no_layer_selection_with_regex, is_positive_int


@dataclass
class HiraConfig(PeftConfig):
    """Configuration of HiRA (Huang et al., ICLR 2025, "HiRA: Parameter-Efficient Hadamard High-Rank
    Adaptation for Large Language Models"): the weight change is the frozen weight times a low-rank
    matrix, elementwise, `delta_W = W0 * (B @ A)`, which can have full rank although `B @ A` has rank r.

    `init_weights=True` starts B at zero (a no-op) with A Kaiming-uniform; `"gaussian"` draws A from
    N(0, 1/r^2) instead; False leaves both random (for tests).
    """

    r: int = field(
        default=32, metadata={"help": "Rank of B @ A, the low-rank factor of the Hadamard product."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    hira_dropout: float = field(default=0.0, metadata={"help": "Dropout probability of the adapter's input."})
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "True for layers storing (in, out) weights."}
    )
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    init_weights: bool | Literal["gaussian"] | None = field(
        default=True,
        metadata={
            "help": "True: B = 0, A Kaiming-uniform (a no-op); 'gaussian': A ~ N(0, 1/r^2); False: random."
        },
        repr=False,
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})
    rank_pattern: dict | None = field(
        default_factory=dict,
        metadata={
            "help": "Regex -> rank overrides per module. As in PEFT 0.21, they apply to bitsandbytes layers and to "
            "adapters added to layers HiRA already wraps; a plain layer HiRA newly wraps gets `r`."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.HIRA
        self.target_modules = as_set(self.target_modules)
        self.exclude_modules = as_set(self.exclude_modules)
        if not is_positive_int(self.r):
            raise ValueError(f"`r` should be a positive integer value, got {self.r!r}.")
        for key, rank in (self.rank_pattern or {}).items():
            if not is_positive_int(rank):
                raise ValueError(f"rank_pattern[{key!r}] should be a positive integer value, got {rank!r}.")
        if not 0.0 <= self.hira_dropout <= 1.0:
            raise ValueError(f"hira_dropout must be a probability in [0, 1], got {self.hira_dropout!r}.")
        gaussian = isinstance(self.init_weights, str) and self.init_weights.lower() == "gaussian"
        if not (self.init_weights in (True, False, None) or gaussian):
            raise ValueError(
                f"init_weights must be True, False, None or 'gaussian', got {self.init_weights!r}."
            )
        check_no_layer_selection_with_regex(self)
