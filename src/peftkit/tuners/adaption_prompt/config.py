"""AdaptionPromptConfig: LLaMA-Adapter's gated adaption prompts in the top attention layers (Zhang et al., 2023)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import PeftConfig
from ...utils.peft_types import PeftType


@dataclass
class AdaptionPromptConfig(PeftConfig):
    """Configuration of adaption prompts: in each of the last `adapter_layers` attention modules, the
    queries also attend to `adapter_len` trained prompt vectors (projected by the layer's own key and
    value projections); that extra attention output is scaled by a zero-initialised gate and added."""

    target_modules: str = field(
        default=None, metadata={"help": "Name of the attention submodules to adapt (default per model type)."}
    )
    adapter_len: int = field(default=None, metadata={"help": "Number of adapter tokens to insert."})
    adapter_layers: int = field(default=None, metadata={"help": "Number of adapter layers (from the top)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.ADAPTION_PROMPT

    @property
    def is_adaption_prompt(self) -> bool:
        return True
