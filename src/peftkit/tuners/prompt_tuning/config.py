"""PromptTuningConfig: trained soft-prompt embeddings in front of the input (Lester et al., 2021)."""

from __future__ import annotations

import enum
import warnings
from dataclasses import dataclass, field
from typing import Any

from ...config import PromptLearningConfig, coerce_enum
from ...utils.peft_types import PeftType
from ...utils.warnings import PeftWarning


class PromptTuningInit(str, enum.Enum):
    """How the virtual-token embeddings start: copied from the embeddings of a text's tokens, of random
    vocabulary tokens, or drawn at random."""

    TEXT = "TEXT"
    SAMPLE_VOCAB = "SAMPLE_VOCAB"
    RANDOM = "RANDOM"


def strip_remote_code(tokenizer_kwargs: dict | None, source: str) -> dict | None:
    """Drop `trust_remote_code` from tokenizer kwargs that came from a file or a dict (never run code an
    adapter file asks for); the caller is told how to opt in deliberately."""
    if not isinstance(tokenizer_kwargs, dict) or "trust_remote_code" not in tokenizer_kwargs:
        return tokenizer_kwargs
    cleaned = {k: v for k, v in tokenizer_kwargs.items() if k != "trust_remote_code"}
    warnings.warn(
        f"Ignoring `trust_remote_code` in the tokenizer_kwargs of {source}: an adapter config may not enable "
        "remote code. To use a tokenizer with custom code, load it yourself and pass `tokenizer_kwargs` with "
        "`trust_remote_code=True` to the config constructor in your own code.",
        PeftWarning,
        stacklevel=3,
    )
    return cleaned


@dataclass
class PromptTuningConfig(PromptLearningConfig):
    """Configuration of prompt tuning: `num_virtual_tokens` trained embeddings (per transformer
    submodule) are prepended to the input embeddings; the base model is frozen."""

    prompt_tuning_init: PromptTuningInit | str = field(
        default=PromptTuningInit.RANDOM,
        metadata={"help": "How to initialise the prompt: RANDOM, TEXT, SAMPLE_VOCAB."},
    )
    prompt_tuning_init_text: str | None = field(
        default=None, metadata={"help": "The text whose token embeddings initialise the prompt (TEXT)."}
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "The tokenizer that tokenises `prompt_tuning_init_text` (TEXT)."}
    )
    tokenizer_kwargs: dict | None = field(
        default=None, metadata={"help": "Keyword arguments for AutoTokenizer.from_pretrained (TEXT only)."}
    )

    _init_enum = PromptTuningInit

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = self._own_peft_type()
        self.prompt_tuning_init = coerce_enum(self._init_enum, self.prompt_tuning_init, "prompt_tuning_init")
        uses_text = self.prompt_tuning_init.value == "TEXT"
        if uses_text and not self.tokenizer_name_or_path:
            raise ValueError(
                "prompt_tuning_init='TEXT' needs tokenizer_name_or_path (the tokenizer of the base model) to "
                "tokenise prompt_tuning_init_text."
            )
        if uses_text and self.prompt_tuning_init_text is None:
            raise ValueError(
                "prompt_tuning_init='TEXT' needs prompt_tuning_init_text, the text to start from."
            )
        if self.tokenizer_kwargs and not uses_text:
            raise ValueError(
                "tokenizer_kwargs is only used with prompt_tuning_init='TEXT'; remove it or use TEXT initialisation."
            )

    def _own_peft_type(self) -> PeftType:
        return PeftType.PROMPT_TUNING

    @classmethod
    def _from_known_keys(cls, kwargs: dict[str, Any]) -> PromptTuningConfig:
        kwargs = dict(kwargs)
        kwargs["tokenizer_kwargs"] = strip_remote_code(kwargs.get("tokenizer_kwargs"), "an adapter config")
        return super()._from_known_keys(kwargs)
