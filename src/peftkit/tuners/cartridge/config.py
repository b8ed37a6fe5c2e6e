"""CartridgeConfig: the fields PEFT 0.21 writes for Cartridge, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import PromptLearningConfig
from ...utils.peft_types import PeftType


@dataclass
class CartridgeConfig(PromptLearningConfig):
    """Configuration of a Cartridge (Eyuboglu et al., 2025, "Cartridges: Lightweight and general-purpose long
    context representations via self-study"): a key/value prefix for every attention layer, stored directly
    as trained tensors (prefix tuning without an encoder) and served as the model's cache.

    The prefix starts random; `initialize_kv_prefix_from_text` / `initialize_kv_prefix_from_past_key_values`
    (in `peftkit.tuners.cartridge.utils`) fill it from the cache of a prefill on the base model instead.
    The first `num_frozen_tokens` virtual tokens never train (the paper keeps the first one, an attention
    sink, frozen).
    """

    num_frozen_tokens: int = field(
        default=1, metadata={"help": "Leading virtual tokens that are not trained (attention sinks)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        frozen = self.num_frozen_tokens
        if isinstance(frozen, bool) or not isinstance(frozen, int) or frozen < 0:
            raise ValueError(f"`num_frozen_tokens` must be an integer >= 0, got {frozen!r}.")
        if self.num_virtual_tokens is not None and frozen > self.num_virtual_tokens:
            raise ValueError(
                f"`num_frozen_tokens` must be <= `num_virtual_tokens`, got num_frozen_tokens={frozen} and "
                f"num_virtual_tokens={self.num_virtual_tokens}."
            )
        self.peft_type = PeftType.CARTRIDGE
