"""UniLoraConfig: the fields PEFT 0.21 writes for Uni-LoRA, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from .._config_checks import check_no_layer_selection_with_regex

_VALID_BIAS = ("none", "all", "unilora_only")


@dataclass
class UniLoraConfig(PeftConfig):
    """Configuration of Uni-LoRA (Li et al., 2025, "Uni-LoRA: One Vector Is All You Need").

    Every entry of every LoRA factor A (r x in) and B (out x r) of the adapted layers is one entry of a
    single trained vector `theta_d` (length `theta_d_length`), times a fixed scale: entry i of the
    flattened factors reads `theta_d[idx[i]] / sqrt(count(idx[i]))`, with the assignment `idx` drawn once
    from `proj_seed` so that each entry of `theta_d` is used equally often. Only `theta_d` trains.
    """

    r: int = field(default=4, metadata={"help": "Rank of the LoRA factors built from theta_d."})
    proj_seed: int = field(
        default=42, metadata={"help": "Seed of the assignment of theta_d entries to the factors' entries."}
    )
    theta_d_length: int = field(
        default=256, metadata={"help": "Length of the one trained vector theta_d (shared by all layers)."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    unilora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input."})
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "True for layers storing (in, out) weights (GPT-2's Conv1D)."}
    )
    bias: str = field(
        default="none", metadata={"help": "Which biases train: 'none', 'all' or 'unilora_only'."}
    )
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    init_theta_d_bound: float = field(
        default=0.02, metadata={"help": "theta_d starts uniform in [-bound, bound] (with init_weights)."}
    )
    init_weights: bool = field(
        default=True,
        metadata={
            "help": "True: theta_d ~ U(-init_theta_d_bound, init_theta_d_bound); False: theta_d ~ N(0, 1)."
        },
    )
    save_indices: bool = field(
        default=False,
        metadata={
            "help": "Save each layer's assignment and scales with the adapter (else re-drawn from proj_seed)."
        },
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.UNILORA
        self.target_modules = as_set(self.target_modules)
        for name in ("r", "theta_d_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` should be a positive integer, got {value!r}.")
        if not 0.0 <= float(self.unilora_dropout) <= 1.0:
            raise ValueError(
                f"`unilora_dropout` should be between 0.0 and 1.0, got {self.unilora_dropout!r}."
            )
        if self.init_theta_d_bound <= 0:
            raise ValueError(
                f"`init_theta_d_bound` should be a positive float, got {self.init_theta_d_bound!r}."
            )
        if self.bias not in _VALID_BIAS:
            raise ValueError(f"`bias` should be one of {_VALID_BIAS}, got {self.bias!r}.")
        check_no_layer_selection_with_regex(self)
