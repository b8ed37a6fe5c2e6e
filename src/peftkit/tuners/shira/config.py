"""ShiraConfig: the fields PEFT 0.21 writes for SHiRA, with the same names and defaults."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from ...utils.warnings import PeftWarning
from .._config_checks import is_int, is_positive_int
from .mask_functions import random_mask


@dataclass
class ShiraConfig(PeftConfig):
    """Configuration of SHiRA (Bhardwaj et al., 2024, "Sparse High Rank Adapters"): a fixed sparse set of
    `r * (in + out)` entries of each targeted weight trains (as many values as a rank-r LoRA has, but
    the update is of high rank).

    The entries come from a mask function: `mask_type="random"` draws them from `random_seed`; any other
    `mask_type` names a function of your own, set after creating the config (`config.mask_fn = fn`, see
    `peftkit.tuners.shira.mask_functions`). The chosen entries are saved with the adapter, so loading never
    needs the function.
    """

    r: int = field(
        default=32,
        metadata={
            "help": "Sets the number of trained entries per layer to r * (in + out), as many as a rank-r LoRA; it "
            "does not limit the rank of the update."
        },
    )
    mask_type: Literal["random"] = field(
        default="random",
        metadata={
            "help": "'random': a random sparse mask drawn from random_seed. Any other name: set your own mask "
            "function afterwards with `config.mask_fn = fn` (fn(base_layer, r, **kwargs) -> 0/1 (out, in) mask "
            "with r * (in + out) ones, on the weight's device)."
        },
    )
    random_seed: int | None = field(
        default=None, metadata={"help": "Seed of the random mask's generator (None: its default seed)."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Module names (exact or dotted suffix), or one regex string; nn.Linear layers only."
        },
    )
    fan_in_fan_out: bool = field(
        default=False,
        metadata={"help": "True for layers storing (in, out) weights (not supported by SHiRA)."},
    )
    init_weights: bool = field(
        default=True,
        metadata={
            "help": "True: the trained values start at zero (a no-op adapter); False: N(0, 1), for tests."
        },
    )
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.SHIRA
        self.target_modules = as_set(self.target_modules)
        if not is_positive_int(self.r):
            raise ValueError(f"`r` should be a positive integer value, got {self.r!r}.")
        if self.random_seed is not None and not is_int(self.random_seed):
            raise ValueError(f"`random_seed` must be an integer or None, got {self.random_seed!r}.")
        self.mask_fn: Callable | None = random_mask if self.mask_type == "random" else None
        if self.mask_fn is None and not self.inference_mode:
            warnings.warn(
                f"mask_type={self.mask_type!r} is not a built-in mask ('random'): set your own mask function with "
                "`config.mask_fn = my_mask_fn` before creating the adapter.",
                PeftWarning,
            )
