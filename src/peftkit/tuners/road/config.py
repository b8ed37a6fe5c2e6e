"""RoadConfig: the fields PEFT 0.21 writes for RoAd, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType

RoadVariant = Literal["road_1", "road_2", "road_4"]
ROAD_VARIANTS = ("road_1", "road_2", "road_4")


@dataclass
class RoadConfig(PeftConfig):
    """Configuration of RoAd (Liao et al., 2024, "3-in-1: 2D Rotary Adaptation for Efficient Finetuning,
    Efficient Batching and Composability").

    The output of each adapted linear layer is rotated pairwise: in every group of `group_size` outputs,
    element k pairs with element k + group_size / 2, and each pair is turned by a trained angle and scaled
    by a trained factor. `variant` says how many angles and scales there are: road_1 one per pair (out / 2
    of each), road_2 one per output (out), road_4 two per output (2 * out).
    """

    variant: str | RoadVariant = field(
        default="road_1", metadata={"help": "'road_1', 'road_2' or 'road_4': angles and scales per pair."}
    )
    group_size: int = field(
        default=64,
        metadata={
            "help": "Outputs are paired within groups of this (even) size; the layers' output sizes must be "
            "divisible by it."
        },
    )
    init_weights: bool = field(
        default=True,
        metadata={
            "help": "True: angles 0 and scales 1 (a no-op); False: angles ~ N(0, 0.5), scales ~ N(1, 0.5)."
        },
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.ROAD
        self.target_modules = as_set(self.target_modules)
        if self.variant not in ROAD_VARIANTS:
            raise ValueError(
                f"Invalid variant {self.variant!r} specified. Please choose from road_1, road_2 or road_4."
            )
        size = self.group_size
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % 2 != 0:
            raise ValueError(
                f"group_size must be a positive even integer (elements are paired), got {size!r}."
            )
