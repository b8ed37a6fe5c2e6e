"""GraloraConfig: the fields PEFT 0.21 writes for GraLoRA, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from .._config_checks import is_int


@dataclass
class GraloraConfig(PeftConfig):
    """Configuration of GraLoRA (Jung et al., 2025, "GraLoRA: Granular Low-Rank Adaptation"): the weight
    is split into `gralora_k x gralora_k` blocks, each with its own rank-`r / gralora_k` LoRA, for the
    parameter count of one rank-r LoRA and up to `gralora_k` times its rank.

    With `hybrid_r > 0` a plain rank-`hybrid_r` LoRA over the whole weight is added (Hybrid GraLoRA); both
    parts are scaled by `alpha / (r + hybrid_r)`.
    """

    r: int = field(
        default=32,
        metadata={
            "help": "Rank of the GraLoRA part (divisible by gralora_k): as many parameters as a rank-r LoRA."
        },
    )
    hybrid_r: int = field(
        default=0, metadata={"help": "Rank of the plain LoRA added over the whole weight (0: none)."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    alpha: int = field(
        default=64, metadata={"help": "Scale: the update is multiplied by alpha / (r + hybrid_r)."}
    )
    gralora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input."})
    gralora_k: int = field(
        default=2,
        metadata={
            "help": "Blocks per side (k x k sub-blocks); r must be divisible by it. 2 is recommended up to r=32, "
            "4 above."
        },
    )
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "True for layers storing (in, out) weights (GPT-2's Conv1D)."}
    )
    bias: str = field(
        default="none", metadata={"help": "Which biases train: 'none', 'all' or 'gralora_only'."}
    )
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    init_weights: bool = field(
        default=True,
        metadata={"help": "True: B starts at zero (a no-op adapter); False: both factors random, for tests."},
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: str | None = field(default=None, metadata={"help": "Name of the layer list."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.GRALORA
        self.target_modules = as_set(self.target_modules)
        if not is_int(self.gralora_k) or self.gralora_k <= 0:
            raise ValueError(f"`gralora_k` should be a positive integer value, got {self.gralora_k!r}.")
        if not is_int(self.r) or self.r <= 0:
            raise ValueError(f"`r` should be a positive integer value, got {self.r!r}.")
        if self.r % self.gralora_k != 0:
            raise ValueError(f"r should be divisible by gralora_k, but got {self.r} and {self.gralora_k}")
        if not is_int(self.hybrid_r) or self.hybrid_r < 0:
            raise ValueError(f"`hybrid_r` should be a non-negative integer value, got {self.hybrid_r!r}.")
        if not (isinstance(self.gralora_dropout, (int, float)) and 0.0 <= self.gralora_dropout <= 1.0):
            raise ValueError(
                f"`gralora_dropout` must be a probability between 0 and 1, got {self.gralora_dropout!r}."
            )
        if self.bias not in ("none", "all") and not str(self.bias).endswith("_only"):
            raise ValueError(f"`bias` must be 'none', 'all' or 'gralora_only', got {self.bias!r}.")
