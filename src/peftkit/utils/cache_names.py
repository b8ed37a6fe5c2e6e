"""The name of transformers' key/value-cache argument: `cache` from transformers 5.24 on, `past_key_values` before.

transformers 5.24 renamed the models' `past_key_values` argument, generation input and output field to
`cache`; the old name is still accepted, with a deprecation warning, until 5.40. peftkit reads a cache
given under either name and passes it under the name the model's `forward` declares, so the same code
runs on both sides of the rename and peftkit's own calls trigger no deprecation warning.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, MutableMapping
from typing import Any

NEW_NAME = "cache"
OLD_NAME = "past_key_values"
CACHE_NAMES = (NEW_NAME, OLD_NAME)


@functools.lru_cache(maxsize=256)
def _declared_name(forward: Callable) -> str | None:
    try:
        parameters = inspect.signature(forward).parameters
    except (TypeError, ValueError):  # a builtin or a C extension: nothing to read
        return None
    return next((name for name in CACHE_NAMES if name in parameters), None)


def cache_argument(model: Any) -> str | None:
    """The name under which `model.forward` takes a cache (`"cache"` or `"past_key_values"`), or None
    when its signature names neither (a task class that does not pass a cache on to its backbone)."""
    forward = model.forward
    return _declared_name(getattr(forward, "__func__", forward))


def cache_argument_or_default(model: Any) -> str:
    """`cache_argument(model)`, or, for a forward that takes only `**kwargs`, the name the installed
    transformers uses."""
    return cache_argument(model) or installed_name()


@functools.lru_cache(maxsize=1)
def installed_name() -> str:
    """`"cache"` where the installed transformers has the rename (5.24 and later), else `"past_key_values"`."""
    from transformers.generation.utils import GenerationMixin

    return _declared_name(GenerationMixin.prepare_inputs_for_generation) or OLD_NAME


def get_cache(mapping: Any) -> Any:
    """The cache held in a kwargs dict, a dict of generation inputs or a model output under either name,
    or None. Keys are listed rather than looked up: transformers' outputs warn on a lookup of the old name."""
    present = set(mapping.keys())
    for name in CACHE_NAMES:
        if name in present and mapping[name] is not None:
            return mapping[name]
    return None


def pop_cache(mapping: MutableMapping[str, Any]) -> Any:
    """Remove the cache from a kwargs dict under both names and return it; both set is an error, as in
    transformers."""
    new, old = mapping.pop(NEW_NAME, None), mapping.pop(OLD_NAME, None)
    if new is not None and old is not None:
        raise ValueError(f"Pass the cache as `{NEW_NAME}` or as `{OLD_NAME}`, not both.")
    return new if new is not None else old


def set_cache(mapping: MutableMapping[str, Any], value: Any, name: str) -> None:
    """Put the cache into a kwargs dict under `name` only (the other spelling is removed)."""
    for other in CACHE_NAMES:
        mapping.pop(other, None)
    mapping[name] = value


def output_cache(outputs: Any) -> Any:
    """The cache of a model or generation output (a `ModelOutput` or a dict; None for a plain tuple or
    tensor), read without the deprecated attribute."""
    return get_cache(outputs) if hasattr(outputs, "keys") else None


def rename_cache_for(mapping: MutableMapping[str, Any], receiver: Any) -> None:
    """Move a cache given under either name to the one `receiver.forward` declares, so a caller may use
    either spelling on any transformers and the model never sees the deprecated one."""
    if any(name in mapping for name in CACHE_NAMES):
        set_cache(mapping, pop_cache(mapping), cache_argument_or_default(receiver))
