"""The option dataclasses a `LoraConfig` holds for its initialisations and variants (`eva_config`,
`corda_config`, `loftq_config`, `use_bdlora`). They sit below the LoRA layers and algorithms, which read
them; peft code imports them from `peftkit.tuners.lora.config`, which re-exports them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["BdLoraConfig", "CordaConfig", "EvaConfig", "LoftQConfig"]


@dataclass
class EvaConfig:
    """Options of EVA (`LoraConfig(init_lora_weights="eva", eva_config=EvaConfig(...))`)."""

    rho: float = field(default=2.0, metadata={"help": "Rho value for EVA redistribution"})
    tau: float = field(default=0.99, metadata={"help": "Cosine similarity threshold for early stopping"})
    use_label_mask: bool = field(default=True, metadata={"help": "Use label mask for EVA initialization"})
    label_mask_value: int = field(
        default=-100,
        metadata={"help": "if use_label_mask=True the value to look for to mask out ignored tokens"},
    )
    whiten: bool = field(default=False, metadata={"help": "Apply whitening to singular vectors"})
    adjust_scaling_factors: bool = field(
        default=True, metadata={"help": "Adjust LoRA scaling factors after the rank redistribution"}
    )

    def __post_init__(self) -> None:
        if self.rho < 1.0:
            raise ValueError("`rho` must be >= 1.0")
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError("`tau` must be between 0.0 and 1.0.")


@dataclass
class CordaConfig:
    """Options of the CorDA calibration (`LoraConfig(init_lora_weights="corda", corda_config=...)`)."""

    cache_file: str | None = field(
        default=None, metadata={"help": "File caching the decomposition (reused when it exists)."}
    )
    covariance_file: str | None = field(
        default=None, metadata={"help": "File caching the input covariances (reused when it exists)."}
    )
    corda_method: Literal["ipm", "kpm"] = field(
        default="ipm", metadata={"help": "'ipm': adapter on the largest components; 'kpm': on the smallest."}
    )
    verbose: bool = field(default=False, metadata={"help": "Print progress."})
    use_float16_for_covariance: bool = field(
        default=False, metadata={"help": "Accumulate covariances in float16 (half the memory, less precise)."}
    )
    prune_temporary_fields: bool = field(
        default=True, metadata={"help": "Remove the covariances and counters from the modules afterwards."}
    )

    def __post_init__(self) -> None:
        if self.corda_method not in ("ipm", "kpm"):
            raise ValueError(f"corda_method must be 'ipm' or 'kpm', got {self.corda_method!r}.")


@dataclass
class LoftQConfig:
    """LoftQ options (`LoraConfig(init_lora_weights="loftq", loftq_config=LoftQConfig(...))`)."""

    loftq_bits: int = field(default=4, metadata={"help": "Quantization bits for LoftQ"})
    loftq_iter: int = field(default=1, metadata={"help": "Alternating iterations for LoftQ"})


@dataclass
class BdLoraConfig:
    """Which targets get a block-diagonal A (`target_modules_bd_a`) or B (`target_modules_bd_b`).

    A pattern matches a module when it is a substring of the module's name (its last dotted part).
    Row-sharded layers (attention out, MLP down) should have bd-A; column-sharded layers (q, k, v, MLP
    up/gate) bd-B. `nblocks` is the serving sharding degree. With `match_strict`, every LoRA target must
    match one of the two lists.
    """

    target_modules_bd_a: list[str] | None = field(
        default=None, metadata={"help": "Modules whose LoRA-A is block-diagonal (substring match)."}
    )
    target_modules_bd_b: list[str] | None = field(
        default=None, metadata={"help": "Modules whose LoRA-B is block-diagonal (substring match)."}
    )
    nblocks: int = field(default=1, metadata={"help": "Number of blocks of each block-diagonal factor."})
    match_strict: bool = field(
        default=True, metadata={"help": "Require every target to match target_modules_bd_a or _bd_b."}
    )

    def __post_init__(self) -> None:
        overlap = set(self.target_modules_bd_a or []) & set(self.target_modules_bd_b or [])
        if overlap:
            raise ValueError(
                f"Found overlapping modules in target_modules_bd lists:{self.target_modules_bd_a} (A) and "
                f"{self.target_modules_bd_b} (B). A module's A or its B can be block-diagonal, not both."
            )
        if not isinstance(self.nblocks, int) or self.nblocks < 1:
            raise ValueError(f"BdLoraConfig.nblocks must be a positive integer, got {self.nblocks!r}.")

    def sides(self, module_name: str) -> tuple[bool, bool]:
        """(A is block-diagonal, B is block-diagonal) for the module called `module_name`."""
        name = module_name.rpartition(".")[2]
        bd_a = any(p in name for p in self.target_modules_bd_a or [])
        bd_b = any(p in name for p in self.target_modules_bd_b or [])
        if bd_a and bd_b:
            raise ValueError(f"Target {module_name} matches both the A and the B block-diagonal patterns.")
        if not (bd_a or bd_b) and self.match_strict:
            raise ValueError(
                f"Target {module_name} matches neither A nor B block-diagonal patterns.If this is intentional, set "
                "match_strict=False in BdLoraConfig during initialization. "
            )
        return bd_a, bd_b
