"""PsoftConfig: the fields PEFT 0.21 writes for PSOFT, with the same names and defaults."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from .._config_checks import check_layer_selection, is_positive_int

AB_SVD_INITS = ("pissa_init", "psoft_init")
SVD_BACKENDS = ("full", "lowrank")
_DEFAULT_LOWRANK_NITER = 10
_DEFAULT_NEUMANN_TERMS = 5


@dataclass
class PsoftConfig(PeftConfig):
    """Configuration of PSOFT ("Efficient Orthogonal Fine-Tuning with Principal Subspace Adaptation",
    https://openreview.net/forum?id=FSHrinMArK) on `nn.Linear` layers.

    `delta_W = (psoft_alpha / r) * B (R - I) A`: A (r x in) and B (out x r) span the weight's top-r singular
    subspace (from its SVD, frozen, rebuilt from the base weight when loaded); only the r x r matrix R
    trains, orthogonal through a Cayley map unless `psoft_orth=False`, optionally scaled on both sides by
    trained vectors (`psoft_mag_b`, `psoft_mag_a`).
    """

    r: int = field(default=32, metadata={"help": "Rank: size of the trained r x r transformation R."})
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or dotted suffix), one regex string, or 'all-linear'."},
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    psoft_alpha: int = field(
        default=32, metadata={"help": "Scale: the change is multiplied by psoft_alpha / r."}
    )
    psoft_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input."})
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "True for layers storing (in, out) weights (not nn.Linear)."}
    )
    ab_svd_init: Literal["psoft_init", "pissa_init"] = field(
        default="psoft_init",
        metadata={
            "help": "'psoft_init': A = V_r^T (orthonormal rows), B = U_r S_r / scaling; 'pissa_init': the "
            "singular values split evenly between A and B."
        },
    )
    psoft_svd: Literal["full", "lowrank"] = field(
        default="full", metadata={"help": "'full': torch.linalg.svd; 'lowrank': torch.svd_lowrank."}
    )
    psoft_svd_lowrank_niter: int = field(
        default=_DEFAULT_LOWRANK_NITER,
        metadata={"help": "Power iterations of torch.svd_lowrank ('lowrank' only)."},
    )
    random_seed: int = field(
        default=0,
        metadata={
            "help": "Seed of torch.svd_lowrank's random projection ('lowrank' only), so A and B are rebuilt "
            "identically when the adapter is loaded."
        },
    )
    psoft_orth: bool = field(
        default=True,
        metadata={"help": "True: R is orthogonal (Cayley map of a skew matrix); False: R is free."},
    )
    psoft_mag_b: bool = field(default=True, metadata={"help": "Train a scaling vector on R's output side."})
    psoft_mag_a: bool = field(default=True, metadata={"help": "Train a scaling vector on R's input side."})
    use_cayley_neumann: bool = field(
        default=False,
        metadata={
            "help": "Approximate the Cayley map's inverse by a Neumann series (faster, less orthogonal)."
        },
    )
    num_cayley_neumann_terms: int = field(
        default=_DEFAULT_NEUMANN_TERMS,
        metadata={"help": "Terms of the Neumann series (use_cayley_neumann only)."},
    )
    cayley_neumann_eps: float | None = field(
        default=None,
        metadata={
            "help": "If set, in (0, 1): the skew matrix is rescaled to this Frobenius norm when larger "
            "(use_cayley_neumann only)."
        },
    )
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})
    init_weights: bool = field(
        default=True, metadata={"help": "True: R = I (a no-op); False: R perturbed randomly (for tests)."}
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Name of the layer list."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.PSOFT
        self.target_modules = as_set(self.target_modules)
        self.exclude_modules = as_set(self.exclude_modules)
        check_layer_selection(self)
        if not is_positive_int(self.r):
            raise ValueError(f"`r` must be a positive integer; got {self.r!r}.")
        if self.ab_svd_init not in AB_SVD_INITS:
            raise ValueError(f"`ab_svd_init` must be one of {list(AB_SVD_INITS)}; got {self.ab_svd_init!r}.")
        if self.psoft_svd not in SVD_BACKENDS:
            raise ValueError(f"`psoft_svd` must be one of {list(SVD_BACKENDS)}; got {self.psoft_svd!r}.")
        if not 0.0 <= float(self.psoft_dropout) <= 1.0:  # nn.Dropout would refuse it when the layer is built
            raise ValueError(f"`psoft_dropout` must be in [0, 1]; got {self.psoft_dropout!r}.")
        self._check_optional_settings()

    def _check_optional_settings(self) -> None:
        """Settings that only matter with another setting: wrong when used, a warning when ignored."""
        if self.psoft_svd != "lowrank" and self.psoft_svd_lowrank_niter != _DEFAULT_LOWRANK_NITER:
            warnings.warn(
                f"`psoft_svd_lowrank_niter` is only used when `psoft_svd='lowrank'`; with psoft_svd={self.psoft_svd!r} "
                f"psoft_svd_lowrank_niter={self.psoft_svd_lowrank_niter} is ignored.",
                UserWarning,
            )
        if self.use_cayley_neumann:
            if self.num_cayley_neumann_terms <= 0:
                raise ValueError(
                    f"`num_cayley_neumann_terms` must be a positive integer; got {self.num_cayley_neumann_terms}."
                )
            if self.cayley_neumann_eps is not None and not 0.0 < self.cayley_neumann_eps < 1.0:
                raise ValueError(
                    f"`cayley_neumann_eps` must be in (0, 1) when set; got {self.cayley_neumann_eps}."
                )
            return
        if self.num_cayley_neumann_terms != _DEFAULT_NEUMANN_TERMS:
            warnings.warn(
                "`num_cayley_neumann_terms` is only used when `use_cayley_neumann=True`; "
                f"num_cayley_neumann_terms={self.num_cayley_neumann_terms} is ignored.",
                UserWarning,
            )
        if self.cayley_neumann_eps is not None:
            warnings.warn(
                "`cayley_neumann_eps` is only used when `use_cayley_neumann=True`; "
                f"cayley_neumann_eps={self.cayley_neumann_eps} is ignored.",
                UserWarning,
            )
