"""FrodConfig: the fields PEFT 0.21 writes for FRoD, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from .._config_checks import (
    check_dropout,
    check_layers_pattern_has_indices,
    check_one_of,
)

_VALID_BIAS = ("none", "all", "frod_only")


@dataclass
class FrodConfig(PeftConfig):
    """Configuration of FRoD (full-rank efficient fine-tuning with rotational degrees, AAAI 2026, doi
    10.1609/aaai.v40i31.39813): each adapted weight is rewritten as
    `U (diag(lambda) + S) V^T`, with a basis V shared by the layers of one role (e.g. every `q_proj`), and
    only `lambda` and the few entries of the sparse S train.
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    projection_prng_key: int = field(
        default=0, metadata={"help": "Seed of the generator that picks the positions of S's entries."}
    )
    save_projection: bool = field(
        default=True,
        metadata={
            "help": "Save the shared bases and S's positions (else rebuilt from the base model and key)."
        },
    )
    frod_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input."})
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "True for layers storing (in, out) weights."}
    )
    bias: str = field(default="none", metadata={"help": "Which biases train: 'none', 'all' or 'frod_only'."})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    init_weights: bool = field(
        default=True,
        metadata={"help": "True: S = 0 (a no-op); False: S ~ N(0, 0.1^2) and lambda moved by N(0, 0.1^2)."},
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})
    sparse_rate: float = field(
        default=0.01, metadata={"help": "Share of S's off-diagonal entries that train, in [0, 1]."}
    )
    regularization_alpha: float = field(
        default=1e-3, metadata={"help": "Ridge term that keeps the shared basis's matrix inverses stable."}
    )
    progressbar: bool = field(
        default=True, metadata={"help": "Show a progress bar while the shared bases are computed."}
    )
    runtime_offload_base_weight: bool = field(
        default=False,
        metadata={"help": "Keep the adapted layers' base weights on the CPU while FRoD does not need them."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.FROD
        self.target_modules = as_set(self.target_modules)
        check_layers_pattern_has_indices(self)
        if not 0.0 <= float(self.sparse_rate) <= 1.0:
            raise ValueError(f"`sparse_rate` should be between 0 and 1, got {self.sparse_rate}.")
        check_dropout(self, "frod_dropout")
        check_one_of(self, "bias", _VALID_BIAS)
