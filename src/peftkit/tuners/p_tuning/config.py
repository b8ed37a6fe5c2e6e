"""PromptEncoderConfig: P-tuning, virtual tokens computed by a small MLP or LSTM (Liu et al., 2021)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ...config import PromptLearningConfig, coerce_enum
from ...utils.peft_types import PeftType


class PromptEncoderReparameterizationType(str, enum.Enum):
    """The network that computes the virtual tokens from their embeddings."""

    MLP = "MLP"
    LSTM = "LSTM"


@dataclass
class PromptEncoderConfig(PromptLearningConfig):
    """Configuration of P-tuning: trained embeddings passed through an MLP (or a bidirectional LSTM and an
    MLP) give the virtual tokens prepended to the input. The saved adapter holds the computed tokens."""

    encoder_reparameterization_type: str | PromptEncoderReparameterizationType = field(
        default=PromptEncoderReparameterizationType.MLP, metadata={"help": "MLP or LSTM."}
    )
    encoder_hidden_size: int = field(
        default=None, metadata={"help": "The hidden size of the prompt encoder."}
    )
    encoder_num_layers: int = field(
        default=2, metadata={"help": "Number of LSTM layers (the MLP always has two hidden layers)."}
    )
    encoder_dropout: float = field(default=0.0, metadata={"help": "Dropout between the LSTM layers."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.P_TUNING
        self.encoder_reparameterization_type = coerce_enum(
            PromptEncoderReparameterizationType,
            self.encoder_reparameterization_type,
            "encoder_reparameterization_type",
        )
