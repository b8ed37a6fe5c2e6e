"""The option dataclasses a `LoraConfig` holds for its initialisations and variants (`eva_config`,
`corda_config`, `loftq_config`, `use_bdlora`, `velora_config`, `kasa_config`, `lora_ga_config`,
`monteclora_config`, `arrow_config`). They sit below the LoRA layers and algorithms, which read them;
peft code imports them from `peftkit.tuners.lora.config`, which re-exports them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "ArrowConfig",
    "BdLoraConfig",
    "CordaConfig",
    "EvaConfig",
    "KasaConfig",
    "LoftQConfig",
    "LoraGAConfig",
    "MontecloraConfig",
    "VeloraConfig",
]


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


def subconfig(value: object, config_cls: type, field_name: str) -> object:
    """`value` as a `config_cls`: None and instances as they are, a dict (read from adapter_config.json)
    built into one, leaving out the fields that are not constructor arguments (`init=False`, which a file
    holds all the same). Anything else is a `TypeError` naming the field."""
    if value is None or isinstance(value, config_cls):
        return value
    if isinstance(value, dict):
        accepted = {f.name for f in dataclasses.fields(config_cls) if f.init}
        return config_cls(**{k: v for k, v in value.items() if k in accepted})
    raise TypeError(
        f"{field_name} must be a {config_cls.__name__}, a dict or None, got {type(value).__name__}."
    )


@dataclass
class VeloraConfig:
    """VeLoRA (Miles et al., 2024): the LoRA A projection keeps, for its backward pass, each input split
    into `num_groups` sub-tokens, each compressed to one number (its projection on a fixed unit vector)."""

    num_groups: int = field(
        default=64,
        metadata={"help": "Number of sub-tokens each input is split into (more: finer gradients)."},
    )
    scale: float = field(
        default=1.0, metadata={"help": "Scale of the reconstructed inputs in the backward pass."}
    )
    init_type: Literal["batch_average", "batch_average_once", "random"] = field(
        default="batch_average",
        metadata={
            "help": "The projection vector: 'batch_average' (the batch's mean sub-token, at every training step), "
            "'batch_average_once' (at the first training step only) or 'random' (fixed at creation)."
        },
    )

    def __post_init__(self) -> None:
        if self.num_groups <= 0:
            raise ValueError(f"`num_groups` should be positive, got {self.num_groups}.")
        if self.scale <= 0:
            raise ValueError(f"`scale` should be positive, got {self.scale}.")
        if self.init_type not in ("batch_average_once", "batch_average", "random"):
            raise ValueError(
                f"Unsupported `init_type` {self.init_type!r}. Supported values are 'batch_average_once', "
                "'batch_average', and 'random'."
            )


@dataclass
class KasaConfig:
    """KaSA (Wang et al., 2024): the base weight loses its `r` smallest singular components (once, when the
    adapter is created: the base weight is changed for good), and the update is `s B diag(d) A` with a
    learned vector `d` (`lora_diag`). `beta` and `gamma` weigh the paper's regularisers, which
    `LoraModel._get_kasa_loss()` returns for you to add to the training loss."""

    beta: float = field(
        default=1e-4, metadata={"help": "Weight of the singular-value penalty sum(lora_diag ** 2)."}
    )
    gamma: float = field(
        default=1e-3, metadata={"help": "Weight of the orthogonality penalty ||B^T B - I|| + ||A A^T - I||."}
    )

    def __post_init__(self) -> None:
        if self.beta < 0:
            raise ValueError(f"`beta` must be non-negative, got {self.beta}.")
        if self.gamma < 0:
            raise ValueError(f"`gamma` must be non-negative, got {self.gamma}.")


@dataclass
class LoraGAConfig:
    """LoRA-GA (Wang et al., 2024): A and B start from the singular vectors of the weight's gradient
    (estimated by `preprocess_loraga`), so the first steps follow full fine-tuning's direction.

    `direction` says which of the top 2r singular components go to A and which to B ("ArB2r": A the first
    r, B the next r; "A2rBr": the reverse; "ArBr": alternating; "random"); `scale` how B is scaled
    ("stable": by out^(1/4) / sqrt(stable_gamma); "weight_svd": to the weight's top singular value;
    "gd_scale": both divided by the LoRA scaling; "unit": not at all).
    """

    direction: Literal["ArBr", "A2rBr", "ArB2r", "random"] = field(
        default="ArB2r", metadata={"help": "Which gradient singular components initialise A and B."}
    )
    scale: Literal["stable", "weight_svd", "gd_scale", "unit"] = field(
        default="stable", metadata={"help": "How the initial factors are scaled."}
    )
    stable_gamma: int = field(default=16, metadata={"help": "gamma of the 'stable' scale."})


@dataclass
class MontecloraConfig:
    """MonteCLoRA (Sengupta et al., 2024): during training the LoRA A factor is a mixture of
    `num_samples` noisy copies, the noise drawn from learned Gaussian/Wishart/Dirichlet posteriors; the
    posteriors' KL terms (`LoraModel._get_monteclora_loss()`, or `MontecloraTrainerMixin`) regularise them.
    Evaluation and merging use the plain factors."""

    num_samples: int = field(default=8, metadata={"help": "Noisy copies of A mixed per training forward."})
    use_entropy: bool = field(
        default=False,
        metadata={"help": "Add the mixture weights' squared sum to the loss (against collapse)."},
    )
    dirichlet_prior: float = field(
        default=0.1, metadata={"help": "Concentration of the Dirichlet prior over the mixture weights."}
    )
    sample_scaler: float = field(default=1e-4, metadata={"help": "Scale of the noise added to A."})
    kl_loss_weight: float = field(default=1e-5, metadata={"help": "Weight of the KL terms in the loss."})
    buffer_size: int = field(
        default=150,
        metadata={"help": "Noise draws prepared at a time (memory: buffer_size * num_samples * in * r)."},
    )

    def __post_init__(self) -> None:
        if self.num_samples <= 0:
            raise ValueError("`num_samples` must be greater than 0.")
        if self.dirichlet_prior <= 0:
            raise ValueError("`dirichlet_prior` must be greater than 0.")
        if self.buffer_size <= 0:
            raise ValueError("`buffer_size` must be greater than 0.")


@dataclass
class ArrowConfig:
    """Arrow (Ostapenko et al., 2024) routes each token through the `top_k` task adapters whose prototype
    (the top right singular vector of `B A`) is most aligned with it; GenKnowSub (`use_gks`) first
    subtracts the average of general adapters from each task adapter. `create_arrow_model` loads the
    adapters and fills the adapter-name lists."""

    top_k: int = field(default=3, metadata={"help": "Task adapters combined per token."})
    router_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the routing."})
    use_gks: bool = field(default=False, metadata={"help": "Apply GenKnowSub to the task adapters."})
    task_adapter_names: list[str] | None = field(
        default=None, init=False, metadata={"help": "Set by create_arrow_model: task_0, task_1, ..."}
    )
    gks_adapter_names: list[str] | None = field(
        default=None, init=False, metadata={"help": "Set by create_arrow_model: gks_0, gks_1, ..."}
    )
    rng_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of the prototypes' power iteration (None: the global generator)."},
    )

    def __post_init__(self) -> None:
        if self.top_k <= 0:
            raise ValueError(f"top_k must be positive, got {self.top_k}.")
        if self.router_temperature <= 0:
            raise ValueError("router_temperature must be greater than 0.")
