"""The named `init_lora_weights` schemes, and the registry that finds the one a config names.

`True`, `False` and `"gaussian"` are handled by the layer itself; every other name comes here. The SVD
schemes (PiSSA, OLoRA, orthogonal) are built in (`init_svd`); CorDA, EVA and LoftQ register theirs from
their own modules (`register_init_scheme`), so the layer knows none of them. The schemes are defined for
LoRA on linear layers (PEFT's rule): the layer checks that before it asks for one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import init_svd

InitScheme = Callable[[Any, str], None]  # (layer, adapter_name): sets the adapter's factors
_SCHEMES: dict[str, InitScheme] = {}


def register_init_scheme(name: str, scheme: InitScheme) -> None:
    """Make `init_lora_weights=name` call `scheme(layer, adapter_name)` once the default factors exist."""
    if name in _SCHEMES and _SCHEMES[name] is not scheme:
        raise ValueError(f"init_lora_weights={name!r} is registered already, by {_SCHEMES[name].__module__}.")
    _SCHEMES[name] = scheme


def apply_init(layer: Any, adapter_name: str, init: str) -> None:
    """Initialise adapter `adapter_name` of `layer` (a LoRA Linear) with the named scheme `init`."""
    if init_svd.is_pissa(init) or init in ("olora", "orthogonal"):
        init_svd.init_from_weight(layer, adapter_name, init)
    elif init in _SCHEMES:
        _SCHEMES[init](layer, adapter_name)
    else:
        raise ValueError(f"Unknown initialization init_lora_weights={init!r}.")
