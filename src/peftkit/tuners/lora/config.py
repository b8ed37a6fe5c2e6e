"""LoraConfig: every field PEFT 0.21 writes for LoRA, with the same names and defaults."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from .._config_checks import check_dropout, check_one_of, is_positive_int

# PEFT code imports the sub-configs from the config module
from .sub_configs import (
    ArrowConfig,
    BdLoraConfig,
    CordaConfig,
    EvaConfig,
    KasaConfig,
    LoftQConfig,
    LoraGAConfig,
    MontecloraConfig,
    VeloraConfig,
    subconfig,
)

__all__ = [
    "ArrowConfig",
    "BdLoraConfig",
    "CordaConfig",
    "EvaConfig",
    "KasaConfig",
    "LoftQConfig",
    "LoraConfig",
    "LoraGAConfig",
    "LoraRuntimeConfig",
    "MontecloraConfig",
    "VeloraConfig",
]

_VALID_BIAS = ("none", "all", "lora_only")
# Initialisations peftkit implements today; the others are accepted by the config (so files from peft
# load) but raise a clear error when an adapter would be created with them.
IMPLEMENTED_INITS = (
    True,
    False,
    "gaussian",
    "pissa",
    "olora",
    "orthogonal",
    "corda",
    "eva",
    "loftq",
    "mica",
    "lora_ga",
)
_KNOWN_INITS = ("gaussian", "eva", "olora", "pissa", "corda", "loftq", "orthogonal", "mica", "lora_ga")
# The sub-config fields and their classes (a dict read from adapter_config.json becomes the class)
_SUBCONFIGS = {
    "use_bdlora": BdLoraConfig,
    "corda_config": CordaConfig,
    "eva_config": EvaConfig,
    "velora_config": VeloraConfig,
    "kasa_config": KasaConfig,
    "lora_ga_config": LoraGAConfig,
    "monteclora_config": MontecloraConfig,
    "arrow_config": ArrowConfig,
}


# LoraConfig fields peft acts on that peftkit does not implement. Accepting them would change nothing, which
# is worse than refusing: a value other than the default is an error naming the field (field -> why and
# what to do instead).
UNIMPLEMENTED_FIELDS = {
    "megatron_config": (
        None,
        "LoRA on Megatron-LM's tensor-parallel layers is not implemented in peftkit; leave megatron_config=None "
        "(train with torch's DDP/FSDP2 instead, or use peft for Megatron models).",
    ),
    "ensure_weight_tying": (
        False,
        "tying the adapters of tied layers (embeddings and LM head) is not implemented in peftkit; set "
        "ensure_weight_tying=False (peftkit warns when an adapted module's weight is tied to another).",
    ),
}


def refuse_unimplemented_fields(config: object) -> None:
    """Raise a ValueError naming the first field of `UNIMPLEMENTED_FIELDS` set to a non-default value."""
    for name, (default, advice) in UNIMPLEMENTED_FIELDS.items():
        value = getattr(config, name, default)
        if value != default:
            raise ValueError(f"LoraConfig {name}={value!r} is not supported: {advice}")


def init_is_implemented(init: bool | str) -> bool:
    """Whether peftkit can create an adapter with `init_lora_weights=init` (`pissa_niter_K` included)."""
    return init in IMPLEMENTED_INITS or (
        isinstance(init, str) and re.fullmatch(r"pissa_niter_\d+", init) is not None
    )


@dataclass
class LoraRuntimeConfig:
    """Settings that matter at run time only; never written to adapter_config.json."""

    ephemeral_gpu_offload: bool = False


@dataclass
class LoraConfig(PeftConfig):
    """Configuration of a LoRA adapter: `W x + (lora_alpha / r) * B A x` on each targeted layer.

    With `use_rslora` the scale is `lora_alpha / sqrt(r)`; with `use_dora` the adapted weight is
    re-normalised per output row and scaled by a learned magnitude (DoRA).
    """

    r: int = field(default=8, metadata={"help": "LoRA rank."})
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    lora_alpha: int = field(default=8, metadata={"help": "LoRA alpha (scale numerator)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input."})
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "True for layers storing (in, out) weights."}
    )
    bias: Literal["none", "all", "lora_only"] = field(
        default="none", metadata={"help": "Which biases train."}
    )
    use_rslora: bool = field(
        default=False, metadata={"help": "Scale by alpha/sqrt(r) (rank-stabilised LoRA)."}
    )
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    init_lora_weights: bool | str = field(
        default=True,
        metadata={
            "help": "True (B = 0), False (random, for debugging), 'gaussian', 'pissa', 'pissa_niter_K', 'olora', "
            "'orthogonal', 'corda', 'eva', 'loftq', 'mica' (B: the weight's minor left singular vectors, frozen; "
            "A = 0) or 'lora_ga' (from the gradient, see preprocess_loraga)."
        },
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})
    rank_pattern: dict = field(default_factory=dict, metadata={"help": "Regex -> rank overrides."})
    alpha_pattern: dict = field(default_factory=dict, metadata={"help": "Regex -> alpha overrides."})
    megatron_config: dict | None = field(default=None, metadata={"help": "Megatron parallel config."})
    megatron_core: str | None = field(default="megatron.core", metadata={"help": "Megatron core module."})
    trainable_token_indices: list[int] | dict[str, list[int]] | None = field(default=None)
    loftq_config: dict = field(default_factory=dict)
    eva_config: Any = field(default=None)
    corda_config: Any = field(default=None)
    lora_ga_config: LoraGAConfig | None = field(
        default=None, metadata={"help": "LoRA-GA options (with init_lora_weights='lora_ga')."}
    )
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (DoRA)."})
    velora_config: VeloraConfig | None = field(
        default=None, metadata={"help": "VeLoRA: compressed activations in A's backward pass."}
    )
    alora_invocation_tokens: list[int] | None = field(default=None)
    use_qalora: bool = field(
        default=False,
        metadata={"help": "QA-LoRA: A reads the input average-pooled in groups of qalora_group_size."},
    )
    qalora_group_size: int = field(
        default=16, metadata={"help": "Input features averaged into one pooled feature (use_qalora=True)."}
    )
    monteclora_config: MontecloraConfig | None = field(
        default=None, metadata={"help": "MonteCLoRA: Monte Carlo mixtures of noisy A factors in training."}
    )
    layer_replication: list[tuple[int, int]] | None = field(default=None)
    runtime_config: LoraRuntimeConfig = field(default_factory=LoraRuntimeConfig)
    lora_bias: bool = field(
        default=False, metadata={"help": "Give lora_B a bias (merged into the base bias)."}
    )
    target_parameters: list[str] | None = field(default=None)
    use_bdlora: Any = field(default=None)
    arrow_config: ArrowConfig | None = field(
        default=None, metadata={"help": "Arrow routing among task adapters (see create_arrow_model)."}
    )
    kasa_config: KasaConfig | None = field(
        default=None, metadata={"help": "KaSA: truncated base weight and a learned singular-value vector."}
    )
    ensure_weight_tying: bool = field(default=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.LORA
        self.target_modules = as_set(self.target_modules)
        self.exclude_modules = as_set(self.exclude_modules)
        if isinstance(self.runtime_config, dict):
            self.runtime_config = LoraRuntimeConfig(**self.runtime_config)
        for name, config_cls in _SUBCONFIGS.items():
            setattr(self, name, subconfig(getattr(self, name), config_cls, name))
        self._validate()

    def _validate(self) -> None:
        if not is_positive_int(self.r):
            raise ValueError(f"LoRA rank r must be a positive integer, got r={self.r!r}.")
        check_dropout(self, "lora_dropout")
        check_one_of(self, "bias", _VALID_BIAS)
        if self.use_dora and self.lora_bias:
            raise ValueError(
                "lora_bias=True is not supported together with DoRA; pass use_dora=False or lora_bias=False."
            )
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError("layers_to_transform cannot be used when target_modules is a str (a regex).")
        if isinstance(self.target_modules, str) and self.layers_pattern is not None:
            raise ValueError("layers_pattern cannot be used when target_modules is a str (a regex).")
        if self.use_qalora and not is_positive_int(self.qalora_group_size):
            raise ValueError(f"qalora_group_size must be a positive integer, got {self.qalora_group_size!r}.")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("When layers_pattern is specified, layers_to_transform must also be specified.")
        init = self.init_lora_weights
        valid_init = (
            init in (True, False)
            or init in _KNOWN_INITS
            or (isinstance(init, str) and re.fullmatch(r"pissa_niter_\d+", init))
        )
        if not valid_init:
            raise ValueError(
                f"init_lora_weights={init!r} is not valid; use True, False, 'gaussian', 'pissa', 'pissa_niter_K', "
                "'olora', 'corda', 'eva', 'loftq', 'orthogonal', 'mica' or 'lora_ga'."
            )
        self._validate_patterns()
        refuse_unimplemented_fields(self)

    def _validate_patterns(self) -> None:
        """rank_pattern/alpha_pattern: regex keys to positive numbers (AdaLoRA's rank_pattern differs)."""
        for name, pattern in {**self.rank_pattern, **self.alpha_pattern}.items():
            if not isinstance(name, str):
                raise ValueError(f"rank_pattern/alpha_pattern keys must be strings, got {name!r}.")
            if isinstance(pattern, bool) or not isinstance(pattern, (int, float)) or pattern <= 0:
                raise ValueError(
                    f"rank_pattern/alpha_pattern value for {name!r} must be positive, got {pattern!r}."
                )
