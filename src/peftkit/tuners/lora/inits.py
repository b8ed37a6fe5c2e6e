"""Dispatch of the named `init_lora_weights` schemes to the modules that implement them.

`True`, `False` and `"gaussian"` are handled by the layer itself; every other name comes here. The
schemes are defined for LoRA on linear layers (PEFT's rule): an Embedding layer keeps its default
initialisation, a convolution or a parameter target raises.
"""

from __future__ import annotations

from typing import Any

from . import init_svd


def apply_init(layer: Any, adapter_name: str, init: str) -> None:
    """Initialise adapter `adapter_name` of `layer` with the named scheme `init`."""
    from .layer import Linear

    if not isinstance(layer, Linear):
        raise ValueError(
            f"init_lora_weights={init!r} is defined for LoRA on linear layers only, not on {type(layer).__name__}; "
            "use init_lora_weights=True for this layer (e.g. leave it out of target_modules for this adapter)."
        )
    if init_svd.is_pissa(init) or init in ("olora", "orthogonal"):
        init_svd.init_from_weight(layer, adapter_name, init)
    elif init == "corda":
        from .corda import init_corda

        init_corda(layer, adapter_name)
    elif init == "eva":
        from .eva import init_eva_placeholder

        init_eva_placeholder(layer, adapter_name)
    elif init == "loftq":
        from .loftq import init_loftq

        init_loftq(layer, adapter_name)
    else:
        raise ValueError(f"Unknown initialization init_lora_weights={init!r}.")
