"""peft's module path for the weight renaming transformers applies when it loads an adapter
(`peft.utils.transformers_weight_conversion`); defined in `peftkit.persistence.weight_conversion`."""

from .lazy_exports import lazy_exports

_HOMES = {"build_peft_weight_mapping": "peftkit.persistence.weight_conversion"}
__all__ = [*_HOMES]
__getattr__, __dir__ = lazy_exports(globals(), _HOMES)
