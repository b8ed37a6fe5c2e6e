"""BufferDict: a ModuleDict-like container of buffers (tensors that are state but never trained).

Methods with fixed random tensors (VeRA's projections) keep them per adapter name, as PEFT does. With
`persistent=False` the buffers stay out of `state_dict()` (they are regenerated instead of saved).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn


class BufferDict(nn.Module):
    """A dict of named buffers, registered on this module (so they follow `.to()` and `state_dict()`)."""

    def __init__(self, buffers: dict[str, torch.Tensor] | None = None, persistent: bool = False) -> None:
        super().__init__()
        self.persistent = persistent
        for key, value in (buffers or {}).items():
            self[key] = value

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._buffers[key]

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        self.register_buffer(key, value, persistent=self.persistent)

    def __delitem__(self, key: str) -> None:
        del self._buffers[key]
        self._non_persistent_buffers_set.discard(key)

    def __contains__(self, key: object) -> bool:
        return key in self._buffers

    def __iter__(self) -> Iterator[str]:
        return iter(self._buffers)

    def __len__(self) -> int:
        return len(self._buffers)

    def update(self, buffers: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> None:
        """Add or replace buffers from a mapping or from (name, tensor) pairs, as `dict.update` does."""
        pairs = buffers.items() if isinstance(buffers, Mapping) else buffers
        for key, value in pairs:
            self[key] = value

    def keys(self):
        return self._buffers.keys()

    def items(self):
        return self._buffers.items()

    def values(self):
        return self._buffers.values()

    def extra_repr(self) -> str:
        return ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in self._buffers.items())
