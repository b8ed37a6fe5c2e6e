"""HRAConfig: the fields PEFT 0.21 writes for HRA, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from .._config_checks import check_layer_selection, check_one_of, is_positive_int


@dataclass
class HRAConfig(PeftConfig):
    """Configuration of HRA (Yuan et al., 2024, "Bridging the Gap Between Low-rank and Orthogonal
    Adaptation via Householder Reflection Adaptation").

    The adapted weight is `W H_1 H_2 ... H_r` with Householder reflections `H_i = I - 2 u_i u_i^T / |u_i|^2`;
    with `apply_GS` the u_i are first orthonormalised (Gram-Schmidt) and the product is `I - 2 U U^T`.
    """

    r: int = field(
        default=8, metadata={"help": "Number of Householder reflections (an even r starts at identity)."}
    )
    apply_GS: bool = field(
        default=False, metadata={"help": "Orthonormalise the reflection vectors (Gram-Schmidt)."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    init_weights: bool = field(
        default=True,
        metadata={"help": "Pairs of equal vectors (the product is the identity); False: random."},
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})
    bias: str = field(default="none", metadata={"help": "Which biases train: 'none', 'all' or 'hra_only'."})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.HRA
        self.target_modules = as_set(self.target_modules)
        self.exclude_modules = as_set(self.exclude_modules)
        if not is_positive_int(self.r):
            raise ValueError(f"`r` should be a positive integer value, got r={self.r!r}.")
        check_one_of(self, "bias", ("none", "all", "hra_only"))
        check_layer_selection(self)
