"""GloraConfig: the fields PEFT 0.21 writes for GLoRA, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from .._config_checks import check_one_of, is_int

GLORA_A_B_KINDS = ("constant", "lora", "none", "vector")
GLORA_C_KINDS = ("lora", "none", "vector")
GLORA_D_E_KINDS = ("constant", "none", "vector")
_VALID_BIAS = ("none", "all", "glora_only")


@dataclass
class GloraConfig(PeftConfig):
    """Configuration of GLoRA (Chavan et al., 2023, "One-for-All: Generalized LoRA for Parameter-Efficient
    Fine-tuning") on `nn.Linear` layers.

    `W' = W0 + W0 * A + B` and `b' = b0 + b0 * D + E + W0 @ C`, each of A..E parameterised as `lora` (a
    rank-`r` product), `vector` (one value per output, or per input for C), `constant` (one scalar) or
    `none` (zero, nothing trained); D and E cannot be `lora`, C cannot be `constant`.
    """

    r: int = field(default=8, metadata={"help": "Rank of the paths parameterised as 'lora'."})
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    bias: str = field(default="none", metadata={"help": "Which biases train: 'none', 'all' or 'glora_only'."})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    config_A_B: Literal["lora", "vector", "constant", "none"] = field(
        default="lora",
        metadata={
            "help": "Form of A (scales W0) and B (added to W0): 'lora', 'vector', 'constant' or 'none'."
        },
    )
    config_C: Literal["lora", "vector", "none"] = field(
        default="lora",
        metadata={"help": "Form of C (the bias gets W0 @ C): 'lora', 'vector' or 'none'."},
    )
    config_D_E: Literal["vector", "constant", "none"] = field(
        default="constant",
        metadata={"help": "Form of D (scales b0) and E (added to b0): 'vector', 'constant' or 'none'."},
    )
    init_weights: bool = field(
        default=True,
        metadata={
            "help": "True: the adapter starts as a no-op (zero down-factors); False: random (Kaiming)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.GLORA
        self.target_modules = as_set(self.target_modules)
        for name, allowed in (
            ("config_A_B", GLORA_A_B_KINDS),
            ("config_C", GLORA_C_KINDS),
            ("config_D_E", GLORA_D_E_KINDS),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"Invalid {name} value: {value!r}. Valid values are: {', '.join(allowed)}.")
        # peft accepts r=0 (empty 'lora' paths: a no-op) and fails on a negative r when building the layers
        if not is_int(self.r) or self.r < 0:
            raise ValueError(f"GLoRA rank r must be a non-negative integer, got r={self.r!r}.")
        check_one_of(self, "bias", _VALID_BIAS)
