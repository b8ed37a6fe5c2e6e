"""A ceiling on the tensors created while an adapter is built from a file.

An adapter config read from disk sizes the tensors its layers create (a LoRA rank, a number of
frequencies, ...). A corrupt value (a rank of 10**7) would have the layers allocate gigabytes before the
file's tensors are compared with them. While `tensor_size_limit` is active, any tensor a torch function
returns with more elements than the limit raises `AdapterLoadError` at once; a tensor that large is then
freed before it is ever written, so it costs no memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from .warnings import AdapterLoadError


class _SizeLimit(TorchFunctionMode):
    def __init__(self, max_elements: int, what: str) -> None:
        super().__init__()
        self.max_elements = max_elements
        self.what = what

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        try:
            result = func(*args, **(kwargs or {}))
        except RuntimeError as err:  # "can't allocate memory": a size no machine has
            if "allocate" in str(err):
                raise AdapterLoadError(
                    f"{self.what} asks for a tensor that cannot be allocated: {err}"
                ) from err
            raise
        if isinstance(result, torch.Tensor) and result.numel() > self.max_elements:
            raise AdapterLoadError(
                f"{self.what} asks for a tensor of shape {tuple(result.shape)} ({result.numel():,} elements), far "
                "larger than any tensor of the model or the adapter file: a size in its config (a rank, a number "
                "of tokens or frequencies) is probably corrupt."
            )
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
