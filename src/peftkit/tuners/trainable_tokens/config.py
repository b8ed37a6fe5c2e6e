"""TrainableTokensConfig: train only some rows (token ids) of an embedding matrix."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType


@dataclass
class TrainableTokensConfig(PeftConfig):
    """Train the embedding rows `token_indices` only; every other row stays frozen.

    The adapter holds the new values of those rows (`trainable_tokens_delta`, initialised to the current
    rows) and the layer computes the embedding with these rows swapped in. With tied input/output
    embeddings the output layer uses the same rows.
    """

    token_indices: list[int] = field(
        default_factory=list,
        metadata={"help": "Token ids (embedding rows) to train, e.g. of added special tokens."},
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "The embedding layer(s); None: the model's input embedding (`get_input_embeddings`)."
        },
    )
    init_weights: bool = field(
        default=True,
        metadata={"help": "True: start from the current rows (a no-op). False: random rows (for testing)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.TRAINABLE_TOKENS
        self.target_modules = as_set(self.target_modules)
