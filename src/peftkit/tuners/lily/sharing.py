"""Which Lily layers share A and B: groups of layers of one target and one weight shape.

Within a group, in model order, every layer uses the first layer's B, and each run of `stride_A`
consecutive layers uses the A of the run's first layer. A layer's target is the longest entry of
`target_modules` its name ends with (the regex itself when `target_modules` is one string); a layer whose
name ends with no entry (possible when adapters are injected from a state dict) keeps its own A and B.
"""

from __future__ import annotations

from torch import nn

from .config import LilyConfig
from .layer import LilyLayer


def _target_of(key: str, target_modules: str | set[str] | None) -> str | None:
    if isinstance(target_modules, str):
        return target_modules
    return max((t for t in target_modules or () if key.endswith(t)), key=len, default=None)


def sharing_groups(model: nn.Module, config: LilyConfig, adapter_name: str) -> list[list[LilyLayer]]:
    """The layers of adapter `adapter_name` that share factors, one list per group, in model order."""
    groups: dict[tuple, list[LilyLayer]] = {}
    for key, module in model.named_modules():
        if not isinstance(module, LilyLayer) or adapter_name not in module.lily_A:
            continue
        target = _target_of(key, config.target_modules)
        if target is not None:
            shape = tuple(module.get_base_layer().weight.shape)
            groups.setdefault((target, shape), []).append(module)
    return list(groups.values())


def share_factors(model: nn.Module, config: LilyConfig, adapter_name: str) -> None:
    """Point each layer of adapter `adapter_name` at the A and B modules it shares."""
    for layers in sharing_groups(model, config, adapter_name):
        shared_B = layers[0].lily_B[adapter_name]
        for index, layer in enumerate(layers):
            leader = layers[index - index % config.stride_A]
            layer.lily_A[adapter_name] = leader.lily_A[adapter_name]
            layer.lily_B[adapter_name] = shared_B
