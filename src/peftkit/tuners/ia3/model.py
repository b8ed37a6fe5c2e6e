"""IA3Model: the IA3 tuner (which layers it adapts, which of them scale their input) and its arithmetic."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from torch import nn

from ...utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING
from .._dispatch import CONV1D
from ..tuners_utils import BaseTuner
from .config import IA3Config
from .layer import Conv2d, Conv3d, IA3Layer, Linear


def _is_feedforward(config: IA3Config, key: str) -> bool:
    """Whether module `key` is one of `feedforward_modules` (regex string, or exact names/dotted suffixes)."""
    modules = config.feedforward_modules
    if isinstance(modules, str):
        return re.fullmatch(modules, key) is not None
    return any(key == name or key.endswith("." + name) for name in modules or ())


class IA3Model(BaseTuner):
    """Adds IA3 scaling vectors to `nn.Linear`, transformers' `Conv1D`, `nn.Conv2d` and `nn.Conv3d`.

    Example:
        >>> from peftkit import IA3Config, IA3Model
        >>> config = IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])
        >>> ia3_model = IA3Model(model, config, "default")
    """

    prefix = "ia3_"
    tuner_layer_cls = IA3Layer
    layer_classes = {nn.Linear: Linear, CONV1D: Linear, nn.Conv2d: Conv2d, nn.Conv3d: Conv3d}

    def _prepare_adapter_config(self, config: IA3Config, model_config: dict) -> IA3Config:
        config = super()._prepare_adapter_config(config, model_config)
        if config.feedforward_modules is None:
            model_type = model_config.get("model_type")
            if model_type not in TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING:
                raise ValueError(
                    f"feedforward_modules is None and peftkit has no default for model_type {model_type!r}: "
                    "please specify feedforward_modules in the IA3Config (e.g. ['down_proj'], or [] for none)."
                )
            config.feedforward_modules = set(
                TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING[model_type]
            )
        return config

    def _layer_kwargs(self, config: IA3Config, key: str) -> dict[str, Any]:
        return {"config": config, "is_feedforward": _is_feedforward(config, key)}

    def add_weighted_adapter(self, adapters: list[str], weights: list[float], adapter_name: str) -> None:
        """Add adapter `adapter_name` whose vectors are `sum_i weights[i] * l_i` over `adapters`.

        The new adapter targets the union of their target (and feed-forward) modules; in a layer that only
        some of them adapt, the sum runs over those. If `adapter_name` exists already, nothing happens.
        """
        if adapter_name in self.peft_config:
            return
        missing = [a for a in adapters if a not in self.peft_config]
        if missing:
            raise ValueError(f"Adapter {missing[0]} does not exist; available: {sorted(self.peft_config)}.")
        if len(weights) != len(adapters):
            raise ValueError(
                f"add_weighted_adapter got {len(adapters)} adapters but {len(weights)} weights; pass one weight per "
                "adapter."
            )
        configs = [self.peft_config[a] for a in adapters]
        self.peft_config[adapter_name] = replace(
            configs[0],
            target_modules=_union([c.target_modules for c in configs]),
            feedforward_modules=_union([c.feedforward_modules for c in configs]),
        )
        self.inject_adapter(self.model, adapter_name)
        for layer in self._tuner_layers(self.model):
            if adapter_name not in layer.ia3_l:
                continue
            combined = layer.ia3_l[adapter_name].data
            combined.zero_()
            for adapter, weight in zip(adapters, weights):
                if adapter in layer.ia3_l:
                    combined.add_(layer.ia3_l[adapter].data.to(combined.dtype) * weight)


def _union(values: list) -> set[str] | str:
    """Several adapters' target lists as one: a set union, or for regex strings `(a)|(b)`."""
    kinds = {isinstance(v, str) for v in values}
    if len(kinds) > 1 or any(v is None for v in values):
        raise ValueError(
            "All adapter configs should have the same type for target and feedforward modules (all lists/sets, or "
            "all regex strings) to be combined by add_weighted_adapter."
        )
    if kinds == {True}:
        return "|".join(f"({v})" for v in values)
    return set().union(*values)
