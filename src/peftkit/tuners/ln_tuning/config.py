"""LNTuningConfig: the fields PEFT 0.21 writes for LN tuning, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import PeftConfig
from ...utils.peft_types import PeftType


@dataclass
class LNTuningConfig(PeftConfig):
    """Configuration of LN tuning (Zhao et al., 2023, "Tuning LayerNorm in Attention"): each targeted
    module (normally a LayerNorm/RMSNorm) gets a trainable copy that replaces it while the adapter is on.

    The targets default per architecture to its normalisation layers. Unlike the other methods, any module
    type can be targeted (its copy is trained in full).
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Module names (exact or dotted suffix) or one regex string; default: the norm layers."
        },
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    modules_to_save: list[str] | str | None = field(
        default=None, metadata={"help": "Modules trained in full."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.LN_TUNING
