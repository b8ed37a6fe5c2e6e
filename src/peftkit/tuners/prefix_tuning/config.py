"""PrefixTuningConfig: trained key/value prefixes for every attention layer (Li & Liang, 2021)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...config import PromptLearningConfig
from ...utils.peft_types import PeftType


@dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """Configuration of prefix tuning: `num_virtual_tokens` trained key and value vectors are put in front
    of every attention layer's keys and values (as a `past_key_values` cache).

    With `prefix_projection`, the prefix is computed from a small embedding by a two-layer MLP of width
    `encoder_hidden_size` while training (the saved adapter holds the computed prefix).
    """

    init_weights: Literal["zero"] | None = field(
        default=None,
        metadata={"help": "'zero' starts the prefix (or the projection's last layer) at zero; None: random."},
    )
    encoder_hidden_size: int = field(
        default=None, metadata={"help": "The hidden size of the projection MLP."}
    )
    prefix_projection: bool = field(default=False, metadata={"help": "Compute the prefix with an MLP."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.PREFIX_TUNING
        if self.init_weights not in (None, "zero"):
            raise ValueError(
                f"init_weights must be None or 'zero' for prefix tuning, got {self.init_weights!r}."
            )
