"""LilyConfig: the fields PEFT 0.21 writes for Lily, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from .._config_checks import check_layers_pattern_has_indices, is_int


@dataclass
class LilyConfig(PeftConfig):
    """Configuration of Lily (Low-Rank Interconnected Adaptation across Layers, arXiv 2407.09946).

    Each targeted layer projects its input down with an A (r x in) that `stride_A` consecutive layers of the
    same target share, and up with a mix of `num_B` B experts that all layers of that target share; a
    per-layer router picks the mix. `delta = scaling * (A x) @ sum_e p_e B_e`.
    """

    r: int = field(
        default=32, metadata={"help": "Rank of A and of every B expert (larger than LoRA's, 2-4x)."}
    )
    stride_A: int = field(
        default=1, metadata={"help": "How many consecutive layers of one target share an A (>= 1)."}
    )
    num_B: int = field(
        default=2, metadata={"help": "B experts shared by all layers of one target (>= 2, for the router)."}
    )
    scaling: float = field(default=1.0, metadata={"help": "Multiplier of the adapter's output."})
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})
    init_weights: bool = field(
        default=True,
        metadata={"help": "True: A and the routers Kaiming-uniform, B zero (a no-op); False: B random too."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.LILY
        self.target_modules = as_set(self.target_modules)
        self.exclude_modules = as_set(self.exclude_modules)
        check_layers_pattern_has_indices(self)
        if not is_int(self.r) or self.r <= 0:
            raise ValueError(f"Lily rank r must be a positive integer, got r={self.r!r}.")
        if not is_int(self.stride_A) or self.stride_A < 1:
            raise ValueError(f"`stride_A` must be an integer of at least 1, got stride_A={self.stride_A!r}.")
        if not is_int(self.num_B) or self.num_B < 2:
            raise ValueError(
                f"`num_B` must be an integer of at least 2 for the router to be trained, got num_B={self.num_B!r}."
            )
