"""peft's module path for adapter state dicts (`peft.utils.save_and_load`); they are defined on the
persistence floor, in `peftkit.persistence.state_dict` (see `lazy_exports`)."""

from .lazy_exports import lazy_exports
from .weights_io import load_peft_weights

_HOMES = {
    "get_peft_model_state_dict": "peftkit.persistence.state_dict",
    "set_peft_model_state_dict": "peftkit.persistence.state_dict",
}
__all__ = ["load_peft_weights", *_HOMES]
__getattr__, __dir__ = lazy_exports(globals(), _HOMES)
