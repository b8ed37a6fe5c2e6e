"""ShadowCache: the base model's key/value cache and the shadow backbone's, passed around as one.

Generation hands the cache a model returned back to it on the next step. ShadowPEFT needs two: the base
model's (whose keys were computed under the shadow injection) and the shadow backbone's (to advance
`s0` one token at a time). `ShadowCache` is a transformers `Cache` (generation checks for one) that holds
both: what changes the batch or the sequence (reset, reorder, crop, repeat, select) happens to both; every
other cache method and attribute is the base cache's. The tuner unpacks it before the base model runs
and packs the two again afterwards.

The class derives from transformers' `Cache`, and `import peftkit` does not load transformers, so it is
built on first use (`shadow_cache_class()`; `peftkit.tuners.shadow.ShadowCache` reads it).
"""

from __future__ import annotations

import functools
from typing import Any

# methods that change the batch or the sequence layout: applied to the base cache and the shadow cache
_BOTH_CACHES = ("reset", "reorder_cache", "crop", "batch_repeat_interleave", "batch_select_indices")


def _on_both(name: str) -> Any:
    def method(self: Any, *args: Any, **kwargs: Any) -> None:
        for cache in (self.base, self.shadow):
            fn = getattr(cache, name, None)
            if fn is not None:
                fn(*args, **kwargs)

    method.__name__ = name
    return method


def _on_base(name: str, is_property: bool) -> Any:
    if is_property:
        return property(lambda self: getattr(self.base, name))

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.base, name)(*args, **kwargs)

    method.__name__ = name
    return method


@functools.cache
def shadow_cache_class() -> type:
    """The `ShadowCache` class (a subclass of transformers' `Cache`), built once."""
    from transformers import Cache

    class ShadowCache(Cache):
        """A base-model cache and a shadow-backbone cache (`base`, `shadow`) used as one `Cache`."""

        __slots__ = ("base", "shadow")

        def __init__(self, base: Any = None, shadow: Any = None) -> None:
            # Cache.__init__ is not called: the storage is the two wrapped caches'
            self.base = base
            self.shadow = shadow

        def __getattr__(self, name: str) -> Any:  # instance attributes of the base cache (`layers`, ...)
            base = object.__getattribute__(self, "base")
            if base is None:
                raise AttributeError(name)
            return getattr(base, name)

        @property
        def is_compileable(self) -> bool:
            return False  # two caches of different layouts are not one static cache

        def get_seq_length(self, layer_idx: int = 0) -> int:
            return 0 if self.base is None else self.base.get_seq_length(layer_idx)

        def to_legacy_cache(self) -> Any:
            raise NotImplementedError("ShadowCache cannot be represented by a single legacy cache tuple.")

        @classmethod
        def from_legacy_cache(cls, past_key_values: Any = None) -> Any:
            raise NotImplementedError("ShadowCache requires separate base and shadow Cache instances.")

        def __len__(self) -> int:
            return 0 if self.base is None else len(self.base)

        def __getitem__(self, layer_idx: int) -> Any:
            return self.base[layer_idx]

        def __iter__(self) -> Any:
            return iter(self.base)

        def __repr__(self) -> str:
            return f"ShadowCache(base={self.base!r}, shadow={self.shadow!r})"

    for name, value in vars(Cache).items():
        if name.startswith("_") or name in vars(ShadowCache):
            continue
        if name in _BOTH_CACHES:
            setattr(ShadowCache, name, _on_both(name))
        elif callable(value) or isinstance(value, property):
            setattr(ShadowCache, name, _on_base(name, isinstance(value, property)))
    for name in _BOTH_CACHES:  # also those a transformers version defines only on subclasses
        if name not in vars(ShadowCache):
            setattr(ShadowCache, name, _on_both(name))
    ShadowCache.__module__, ShadowCache.__qualname__ = __name__, "ShadowCache"
    return ShadowCache


def __getattr__(name: str) -> Any:
    # `ShadowCache` as a module attribute too (its __module__ / __qualname__ name it here, for pickling)
    if name == "ShadowCache":
        return shadow_cache_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
