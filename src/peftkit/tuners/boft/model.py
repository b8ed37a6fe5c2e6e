"""BOFTModel: the BOFT tuner (which layer kinds it adapts, with which settings)."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from ...utils.warnings import PeftWarning
from ..tuners_utils import BaseTuner
from .config import BOFTConfig
from .layer import BOFTLayer, Conv2d, Linear


class BOFTModel(BaseTuner):
    """Adds BOFT rotations and scales to `nn.Linear` and `nn.Conv2d` layers.

    Example:
        >>> from peftkit import BOFTConfig, BOFTModel
        >>> boft_model = BOFTModel(model, BOFTConfig(target_modules=["q_proj", "v_proj"], boft_block_size=4), "default")
    """

    prefix = "boft_"
    tuner_layer_cls = BOFTLayer
    layer_classes = {nn.Linear: Linear, nn.Conv2d: Conv2d}

    @classmethod
    def _config_for_weights(cls, config: BOFTConfig, tensors: dict[str, torch.Tensor]) -> BOFTConfig:
        """A file whose `boft_R` holds another number of butterfly factors than its config says (peft 0.21
        silently uses one factor wherever its CUDA extension does not build, and saves that) is loaded with
        the number its tensors hold, with a warning; its config then says so, and a save writes it."""
        found = {t.shape[0] for key, t in tensors.items() if key.rpartition(".")[2] == "boft_R" and t.dim()}
        if len(found) != 1 or found == {config.boft_n_butterfly_factor}:
            return config  # nothing to adjust, or an inconsistent file the shape checks will name
        factors = found.pop()
        warnings.warn(
            f"This BOFT adapter's config says boft_n_butterfly_factor={config.boft_n_butterfly_factor}, but its "
            f"boft_R tensors hold {factors} butterfly factor(s): peft 0.21 uses one factor wherever its CUDA "
            f"extension does not build and saves that. Loading it with {factors} factor(s), as its tensors say "
            f"(the loaded config says boft_n_butterfly_factor={factors}, and so do files saved from it).",
            PeftWarning,
            stacklevel=2,
        )
        config = copy.copy(config)
        config.boft_n_butterfly_factor = factors
        return config

    def _layer_kwargs(self, config: BOFTConfig, key: str) -> dict[str, Any]:
        return {
            "boft_block_size": config.boft_block_size,
            "boft_block_num": config.boft_block_num,
            "boft_n_butterfly_factor": config.boft_n_butterfly_factor,
            "boft_dropout": config.boft_dropout,
            "init_weights": config.init_weights,
            "fan_in_fan_out": config.fan_in_fan_out,
        }
