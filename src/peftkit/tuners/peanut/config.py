"""PeanutConfig: the fields PEFT 0.21 writes for PEANuT, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from .._config_checks import (
    check_layers_pattern_has_indices,
    is_int,
    is_positive_int,
)


def activation_names() -> list[str]:
    """The activation names PEANuT accepts: the keys of transformers' `ACT2FN` (imported on first use, so
    that `import peftkit` does not load transformers)."""
    from transformers.activations import ACT2FN

    return sorted(ACT2FN.keys())


@dataclass
class PeanutConfig(PeftConfig):
    """Configuration of PEANuT (Zhong et al., 2024, "PEANuT: Parameter-Efficient Adaptation with Weight-aware
    Neural Tweakers", https://arxiv.org/abs/2410.01870) on `nn.Linear` layers.

    The change is a small network of the base weight: `delta_W = scaling * net(W0^T)^T`, `net` mapping each
    row of `W0^T` (an input feature's weights, length out) to r hidden units through `A`, `depth` encoder and
    `depth` decoder layers with residual connections, and back to out units through `B`.
    """

    r: int = field(default=32, metadata={"help": "Hidden width of the adapter network."})
    depth: int = field(
        default=0, metadata={"help": "Encoder (and decoder) layers between A and B; 0: A then B."}
    )
    act_fn: str = field(
        default="relu", metadata={"help": "Activation of the adapter network: a key of transformers' ACT2FN."}
    )
    scaling: float = field(default=1.0, metadata={"help": "Multiplier of the weight change."})
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
        metadata={
            "help": "True: B starts at zero (a no-op), the rest Kaiming-uniform; False: all Kaiming-uniform."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.PEANUT
        self.target_modules = as_set(self.target_modules)
        self.exclude_modules = as_set(self.exclude_modules)
        check_layers_pattern_has_indices(self)
        if not is_positive_int(self.r):
            raise ValueError(f"`r` must be a positive integer, got r={self.r!r}.")
        if not is_int(self.depth) or self.depth < 0:
            raise ValueError(f"`depth` can only be a non-negative integer, got depth={self.depth!r}.")
        # "relu" (the default) is always in ACT2FN: a default config needs no transformers, so registering
        # the method (which builds one) keeps `import peftkit` free of it
        if self.act_fn != "relu" and self.act_fn not in activation_names():
            raise ValueError(f"Unsupported `act_fn`: {self.act_fn!r}. Must be one of {activation_names()}.")
