"""A ceiling on the tensors created while an adapter is built from a file.

An adapter config read from disk sizes the tensors its layers create (a LoRA rank, a number of
frequencies, ...). A corrupt value (a rank of 10**7) would have the layers allocate gigabytes before the
file's tensors are compared with them. While `tensor_size_limit` is active, a factory function asked for
more elements than the limit raises `AdapterLoadError` before it allocates, and any other torch function
returning such a tensor raises at once, before the tensor is written (so it costs no memory).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode, resolve_name

from .warnings import AdapterLoadError

# factory functions whose size is known before they allocate (their first arguments, or `size=`)
_FACTORIES = {"torch.empty", "torch.zeros", "torch.ones", "torch.rand", "torch.randn", "torch.full"}


def _requested_shape(func: Any, args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    if resolve_name(func) not in _FACTORIES:
        return None
    size = kwargs.get("size", args[0] if args else None)
    if isinstance(size, int):  # torch.empty(3, 4)
        size = [a for a in args if isinstance(a, int)]
    try:
        return tuple(int(n) for n in size)
    except (TypeError, ValueError):
        return None


class _SizeLimit(TorchFunctionMode):
    def __init__(self, max_elements: int, what: str) -> None:
        super().__init__()
        self.max_elements = max_elements
        self.what = what

    def _refuse(self, shape: tuple[int, ...]) -> None:
        raise AdapterLoadError(
            f"{self.what} asks for a tensor of shape {shape} ({math.prod(shape):,} elements), far larger than "
            "any tensor of the model or the adapter file: a size in its config (a rank, a number of tokens or "
            "frequencies) is probably corrupt."
        )

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        shape = _requested_shape(func, args, kwargs)
        if shape is not None and math.prod(shape) > self.max_elements:
            self._refuse(shape)  # before anything is allocated
        try:
            result = func(*args, **kwargs)
        except RuntimeError as err:  # "can't allocate memory": a size no machine has
            if "allocate" in str(err):
                raise AdapterLoadError(
                    f"{self.what} asks for a tensor that cannot be allocated: {err}"
                ) from err
            raise
        if isinstance(result, torch.Tensor) and result.numel() > self.max_elements:
            self._refuse(tuple(result.shape))  # made another way: refused before it is filled
        return result


@contextmanager
def tensor_size_limit(max_elements: int, what: str) -> Iterator[None]:
    """Refuse, naming `what`, any tensor created in this block with more than `max_elements` elements."""
    with _SizeLimit(max_elements, what):
        yield


def adapter_size_limit(model: torch.nn.Module, file_tensors: dict[str, torch.Tensor]) -> int:
    """The most elements a tensor built for an adapter from `file_tensors` may plausibly have: a few times
    the largest tensor of the model or the file (layers compute temporaries of their weights' size)."""
    largest = max(
        (t.numel() for t in [*model.parameters(), *model.buffers(), *file_tensors.values()]), default=0
    )
    return 4 * largest + 2**20
