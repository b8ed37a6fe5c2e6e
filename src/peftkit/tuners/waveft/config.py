"""WaveFTConfig: the fields PEFT 0.21 writes for WaveFT, with the same names and defaults."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from ...utils.warnings import PeftWarning
from .._config_checks import check_layer_selection, check_one_of, is_positive_int
from .wavelets import NOT_ORTHOGONAL, WAVELET_FAMILIES

_VALID_BIAS = ("none", "all", "waveft_only")


@dataclass
class WaveFTConfig(PeftConfig):
    """Configuration of WaveFT (Bilican et al., 2025, "Exploring Sparsity for Parameter Efficient Fine
    Tuning Using Wavelets"): the weight change is the inverse wavelet transform of sparse coefficients.

    `delta_W = scaling * IDWT2(S)`, where S is zero except at `n_frequency` entries drawn once from
    `random_loc_seed`; only those coefficients train. With `use_idwt=False`, `delta_W = scaling * S`.
    """

    n_frequency: int = field(
        default=2592, metadata={"help": "Trained wavelet coefficients per layer (at most in * out)."}
    )
    scaling: float = field(default=25.0, metadata={"help": "Scale of the weight change (like LoRA's alpha)."})
    wavelet_family: str = field(
        default="db1",
        metadata={"help": f"The wavelet of the inverse transform, one of {', '.join(WAVELET_FAMILIES)}."},
    )
    use_idwt: bool = field(
        default=True,
        metadata={"help": "False: the sparse coefficients are the weight change itself (no transform)."},
    )
    random_loc_seed: int = field(default=777, metadata={"help": "Seed of the coefficients' locations."})
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "True for layers storing (in, out) weights (GPT-2's Conv1D)."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    bias: str = field(
        default="none", metadata={"help": "Which biases train: 'none', 'all' or 'waveft_only'."}
    )
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})
    n_frequency_pattern: dict | None = field(
        default_factory=dict, metadata={"help": "Regex -> n_frequency overrides per module."}
    )
    proportional_parameters: bool = field(
        default=False,
        metadata={
            "help": "Share n_frequency * (number of layers) out in proportion to each layer's in * out (at least 1)."
        },
    )
    init_weights: bool = field(
        default=True, metadata={"help": "True: coefficients start at 0 (a no-op); False: N(0, 0.01^2)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.WAVEFT
        self.target_modules = as_set(self.target_modules)
        self.exclude_modules = as_set(self.exclude_modules)
        check_layer_selection(self)
        if self.wavelet_family not in WAVELET_FAMILIES:
            raise ValueError(
                f"Wavelet family {self.wavelet_family!r} not supported. Supported wavelet families are: "
                f"{list(WAVELET_FAMILIES)}"
            )
        if self.wavelet_family in NOT_ORTHOGONAL:
            warnings.warn(
                f"wavelet_family={self.wavelet_family!r}: PEFT 0.21's filter for it is not an orthogonal wavelet "
                "filter (its coefficients are garbled); peftkit uses the same numbers, so that adapters give the "
                "same weights in both libraries. Choose another family for a true wavelet basis.",
                PeftWarning,
            )
        check_one_of(self, "bias", _VALID_BIAS)
        if not is_positive_int(self.n_frequency):
            raise ValueError(f"`n_frequency` should be a positive integer value, got {self.n_frequency!r}.")
