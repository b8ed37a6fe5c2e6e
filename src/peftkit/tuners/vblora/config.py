"""VBLoRAConfig: the fields PEFT 0.21 writes for VB-LoRA, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from .._config_checks import (
    check_dropout,
    check_layers_pattern_has_indices,
    check_one_of,
    is_positive_int,
)

_VALID_BIAS = ("none", "all", "vblora_only")


@dataclass
class VBLoRAConfig(PeftConfig):
    """Configuration of a VB-LoRA adapter (Li et al., 2024, "VB-LoRA: Extreme Parameter Efficient Fine-Tuning
    with Vector Banks").

    `W x + B A x`, LoRA's factors assembled from one trained bank of `num_vectors` vectors of length
    `vector_length`: each length-`vector_length` piece of A and B is a softmax-weighted sum of the `topk`
    bank vectors its trained logits rank highest.
    """

    r: int = field(default=4, metadata={"help": "Rank of the assembled LoRA factors."})
    num_vectors: int = field(default=256, metadata={"help": "Number of vectors in the bank."})
    vector_length: int = field(
        default=256,
        metadata={"help": "Length of each bank vector; it must divide the adapted layers' in and out sizes."},
    )
    topk: int = field(default=2, metadata={"help": "Bank vectors mixed into each piece of A and B."})
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    save_only_topk_weights: bool = field(
        default=False,
        metadata={
            "help": "Save only the top-k indices and weights of the logits (much smaller; such a file can be "
            "used for inference and merging, not to resume training)."
        },
    )
    vblora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input."})
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "True for layers storing (in, out) weights."}
    )
    bias: str = field(
        default="none", metadata={"help": "Which biases train: 'none', 'all' or 'vblora_only'."}
    )
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    init_vector_bank_bound: float = field(
        default=0.02,
        metadata={"help": "The bank starts as U(-bound, bound); not zero, or no gradient reaches it."},
    )
    init_logits_std: float = field(
        default=0.1, metadata={"help": "The logits start as N(0, init_logits_std)."}
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.VBLORA
        self.target_modules = as_set(self.target_modules)
        self.exclude_modules = as_set(self.exclude_modules)
        check_layers_pattern_has_indices(self)
        for name in ("r", "num_vectors", "vector_length", "topk"):
            if not is_positive_int(getattr(self, name)):
                raise ValueError(f"`{name}` should be a positive integer, got {getattr(self, name)!r}.")
        if self.topk > self.num_vectors:
            raise ValueError(
                f"`topk` ({self.topk}) cannot exceed `num_vectors` ({self.num_vectors}): each piece mixes topk of "
                "the bank's vectors."
            )
        check_dropout(self, "vblora_dropout")
        check_one_of(self, "bias", _VALID_BIAS)
