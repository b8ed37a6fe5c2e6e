"""HiraModel: the HiRA tuner (which layer kinds it adapts, with which rank)."""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from ...utils.other import get_pattern_key
from ...utils.warnings import PeftWarning
from .._bnb import is_bnb_layer
from .._dispatch import CONV1D, base_of
from ..tuners_utils import BaseTuner
from .bnb import dispatch_bnb
from .config import HiraConfig
from .layer import Conv1d, Conv2d, Conv3d, Embedding, HiraLayer, Linear


def _pattern_rank(config: HiraConfig, key: str) -> int:
    patterns = config.rank_pattern or {}
    return patterns.get(get_pattern_key(patterns.keys(), key), config.r)


def _takes_pattern_rank(model: nn.Module, key: str) -> bool:
    """PEFT 0.21 builds a plain layer HiRA newly wraps with `r`, whatever rank_pattern says; it applies
    rank_pattern to bitsandbytes layers and to new adapters of layers HiRA wraps already. So does peftkit:
    the files then have the same shapes in both libraries."""
    module = model.get_submodule(key)
    return isinstance(module, HiraLayer) or is_bnb_layer(base_of(module))


class HiraModel(BaseTuner):
    """Adds HiRA to `nn.Linear`, transformers' `Conv1D`, `nn.Embedding`, `nn.Conv1d/2d/3d` and
    bitsandbytes' `Linear4bit`/`Linear8bitLt` layers.

    Example:
        >>> from peftkit import HiraConfig, get_peft_model
        >>> model = get_peft_model(model, HiraConfig(r=32, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "hira_"
    tuner_layer_cls = HiraLayer
    layer_classes = {
        nn.Embedding: Embedding,
        nn.Conv1d: Conv1d,
        nn.Conv2d: Conv2d,
        nn.Conv3d: Conv3d,
        nn.Linear: Linear,
        CONV1D: Linear,
    }
    layer_dispatchers = (dispatch_bnb,)
    keeps_config_fan_in_fan_out = True  # PEFT's HiRA saves the config's value as the user gave it

    def _pre_injection_hook(
        self, model: nn.Module, config: HiraConfig, adapter_name: str, matched: list[str]
    ) -> None:
        ignored = [
            k for k in matched if _pattern_rank(config, k) != config.r and not _takes_pattern_rank(model, k)
        ]
        if ignored:
            warnings.warn(
                f"HiRA adapter '{adapter_name}': rank_pattern does not apply to {ignored[:5]}"
                f"{' ...' if len(ignored) > 5 else ''}; they get r={config.r}, as in PEFT 0.21 (which applies "
                "rank_pattern only to bitsandbytes layers and to layers that already hold a HiRA adapter), so "
                "that the adapter files are the same in both libraries.",
                PeftWarning,
                stacklevel=2,
            )

    def _layer_kwargs(self, config: HiraConfig, key: str) -> dict[str, Any]:
        # (a method hook: in a mixed model `self` is the mixed tuner)
        r = _pattern_rank(config, key) if _takes_pattern_rank(self.model, key) else config.r
        return {"r": r, "config": config, "fan_in_fan_out": config.fan_in_fan_out}
