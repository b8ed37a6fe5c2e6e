"""peft's module path for hot-swapping LoRA adapters (`peft.utils.hotswap`); it is LoRA's, defined in
`peftkit.tuners.lora.hotswap` (see `lazy_exports`)."""

from .lazy_exports import lazy_exports

_HOMES = dict.fromkeys(
    (
        "CONFIG_KEYS_TO_CHECK",
        "check_hotswap_configs_compatible",
        "hotswap_adapter",
        "hotswap_adapter_from_state_dict",
        "prepare_model_for_compiled_hotswap",
    ),
    "peftkit.tuners.lora.hotswap",
)
__all__ = [*_HOMES]
__getattr__, __dir__ = lazy_exports(globals(), _HOMES)
