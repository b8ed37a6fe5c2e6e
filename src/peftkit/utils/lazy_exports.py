"""Public module paths that peft has and whose names live on a higher floor here.

Code written against peft imports e.g. `peft.utils.get_peft_model_state_dict` or
`peft.utils.other.AuxiliaryTrainingWrapper`. In peftkit those names are defined above `utils/` (state
dicts sit above the methods, the modules_to_save wrapper in the framework), and a ground-floor module
must not import upward. Such a module declares the names with `lazy_exports`: each is imported from its
home module the first time it is read (PEP 562), and then cached in the module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    namespace: dict[str, Any], homes: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for a module whose `namespace` (its `globals()`) also offers the names
    in `homes` (name -> absolute module path that defines it)."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(homes))

    return __getattr__, __dir__
