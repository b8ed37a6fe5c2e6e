"""FourierFTConfig: the fields PEFT 0.21 writes for FourierFT, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from .._config_checks import check_layer_selection, check_one_of, is_positive_int


@dataclass
class FourierFTConfig(PeftConfig):
    """Configuration of FourierFT (Gao et al., 2024, "Parameter-Efficient Fine-Tuning with Discrete Fourier
    Transform"): the weight change is the real part of the inverse 2-D DFT of a sparse spectrum.

    `delta_W = scaling * Re(IDFT2(S))`, where S (out x in) is zero except at `n_frequency` entries drawn
    once from `random_loc_seed`; only those `n_frequency` coefficients train.
    """

    n_frequency: int = field(
        default=1000, metadata={"help": "Trained spectral coefficients per layer (at most in * out)."}
    )
    scaling: float = field(
        default=150.0, metadata={"help": "Scale of the weight change (like LoRA's alpha)."}
    )
    random_loc_seed: int | None = field(
        default=777,
        metadata={"help": "Seed of the frequency locations (None: drawn from torch's global RNG)."},
    )
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "True for layers storing (in, out) weights."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    bias: str = field(
        default="none", metadata={"help": "Which biases train: 'none', 'all' or 'fourier_only'."}
    )
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})
    n_frequency_pattern: dict = field(
        default_factory=dict, metadata={"help": "Regex -> n_frequency overrides per module."}
    )
    init_weights: bool = field(
        default=False, metadata={"help": "False: spectrum ~ N(0, 1) (as the paper); True: zeros (a no-op)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.FOURIERFT
        self.target_modules = as_set(self.target_modules)
        self.exclude_modules = as_set(self.exclude_modules)
        if not is_positive_int(self.n_frequency):
            raise ValueError(f"`n_frequency` should be a positive integer value, got {self.n_frequency!r}.")
        check_one_of(self, "bias", ("none", "all", "fourier_only"))
        check_layer_selection(self)
