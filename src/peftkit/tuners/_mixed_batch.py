"""`MixedBatch`: the routing of one `adapter_names=` call, built once and shared by every layer.

`PeftModel.forward/generate(adapter_names=[...])` gives sample i adapter `adapter_names[i]`. Each adapted
layer used to work the routing out again on every call (the set of names, a slot per sample, an index
tensor); during generation that is every layer at every decoding step. A `MixedBatch` is that routing,
computed once per call: it is a `list` of the per-sample names (so code that takes a plain list keeps
working), plus what layers derive from it, cached on the object:

- `adapters`: the distinct adapter names, sorted (BASE_ADAPTER_NAME excluded);
- `serial`: a number no other `MixedBatch` of this process has, so a layer can remember "I checked my
  cached factors against this routing already" across the decoding steps of one `generate` call;
- `for_batch(n)`: the routing for a batch expanded to n rows (beams, `num_return_sequences`), cached;
- `cached(key, build)`: any other derived value (index tensors per device, masks per rank layout).

A layer may also receive a plain list (users call layers directly); `as_mixed_batch` wraps it.

Passing the same `MixedBatch` to several calls states that the adapters it names did not change between
them: layers then reuse what they derived for it (their stacked factors) without checking them again,
as the decoding steps of one `generate` call do. The serving engine does so across the decoding steps
of a batch whose rows, and the store's adapters, stay the same.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

BASE_ADAPTER_NAME = "__base__"  # in `adapter_names=`, the samples that get no adapter

_serials = itertools.count(1)


class MixedBatch(list):
    """The per-sample adapter names of one mixed-adapter call, with values derived from them cached."""

    def __init__(self, names: Iterable[str]) -> None:
        super().__init__(names)
        self.serial = next(_serials)
        self.adapters: tuple[str, ...] = tuple(sorted(set(self) - {BASE_ADAPTER_NAME}))
        self._cache: dict[Any, Any] = {}

    def for_batch(self, batch_size: int) -> MixedBatch:
        """This routing for a batch of `batch_size` rows: each sample's name repeated `batch_size / len`
        times when generation expanded the batch (beams, several return sequences); itself otherwise."""
        if batch_size == len(self) or batch_size % max(len(self), 1) != 0:
            return self
        return self.cached(("expanded", batch_size), lambda: self._expanded(batch_size // len(self)))

    def _expanded(self, repeats: int) -> MixedBatch:
        return MixedBatch(name for name in self for _ in range(repeats))

    def cached(self, key: Any, build: Callable[[], Any]) -> Any:
        """`build()`, computed once per key for this routing."""
        try:
            return self._cache[key]
        except KeyError:
            value = self._cache[key] = build()
            return value


def as_mixed_batch(adapter_names: Iterable[str]) -> MixedBatch:
    """`adapter_names` as a `MixedBatch` (itself when it already is one)."""
    return adapter_names if isinstance(adapter_names, MixedBatch) else MixedBatch(adapter_names)
