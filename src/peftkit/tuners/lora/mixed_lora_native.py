"""Mixed-adapter LoRA in a native CPU kernel (`mixed_lora.c`): the rows of each adapter multiplied by
its factors, every adapter's factors read once per call, nothing copied and no FLOPs spent on other
adapters' rows.

`mixed_batch.torch_mixed_lora` must choose between computing every adapter for every row ("dense") and
copying each sample's factors before two `bmm`s ("per sample"); for decoding, where a step's cost is
reading the adapters, both do several times the needed work unless sample i happens to use slot i. This
kernel takes the samples grouped by slot (`segments`, worked out once per routing) and does only the
needed work, on float32 CPU tensors with 8-aligned widths (`applies`); elsewhere the torch kernel runs.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from ...utils import cpu_kernels

_SOURCE = Path(__file__).with_name("mixed_lora.c")
_ptr, _i64, _i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES = {"mixed_lora": [_ptr, _ptr, _ptr, _ptr, _ptr, _ptr, *[_i64] * 5, _i32, _i32]}


_KERNELS = cpu_kernels.KernelLibrary(_SOURCE, _SIGNATURES)
available = _KERNELS.available
unavailable_reason = _KERNELS.unavailable_reason


def applies(x: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether the kernel (`BoundKernel`) runs these rows: float32, on the CPU, contiguous, both widths
    multiples of 8, and nothing that autograd would have to differentiate. (The factor stacks need no
    check: a bank builds them contiguous, without grad, on its factors' device, and the layer casts x to
    their dtype.)"""
    return (
        x.dtype == out.dtype == torch.float32
        and x.device.type == out.device.type == "cpu"
        and x.is_contiguous()
        and out.is_contiguous()
        and x.shape[-1] % 8 == 0
        and out.shape[-1] % 8 == 0
        and not (torch.is_grad_enabled() and (x.requires_grad or out.requires_grad))
        and available()
    )


def segments(slot_list: list[int], slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, starts): the samples grouped by slot (slot s owns `order[starts[s]:starts[s + 1]]`, in
    sample order); samples without a slot (-1) are in no group."""
    order = sorted((i for i, slot in enumerate(slot_list) if slot >= 0), key=lambda i: slot_list[i])
    counts = [0] * (slots + 1)
    for slot in slot_list:
        if slot >= 0:
            counts[slot + 1] += 1
    starts = torch.tensor(counts, dtype=torch.int64).cumsum(0)
    return torch.tensor(order, dtype=torch.int64), starts


class BoundKernel:
    """The kernel with one bank's stacks and one grouping bound (pointers and sizes worked out once): a
    call passes only the rows. Decoding calls it once per layer per token, where each call is a few
    microseconds and re-deriving the bound arguments added ~2 us. Holds the tensors it points into; a copy
    (deepcopy, pickle) binds the copied tensors, never the original's memory."""

    def __init__(
        self, stack_A: torch.Tensor, stack_B: torch.Tensor, grouped: tuple[torch.Tensor, torch.Tensor]
    ) -> None:
        order, starts = grouped
        count, rank, in_features = stack_A.shape
        self._bound = (stack_A, stack_B, grouped)
        self._factors = (stack_A.data_ptr(), stack_B.data_ptr(), order.data_ptr(), starts.data_ptr(), count)
        self._sizes = (in_features, stack_B.shape[-1], rank)

    def __reduce__(self) -> tuple:
        return type(self), self._bound

    def __call__(self, x: torch.Tensor, out: torch.Tensor, rows_per_sample: int, accumulate: bool) -> None:
        """`out[row] (+)= x[row] A_s^T B_s` for every row of the samples in slot s's group, s over the
        stacks (A: (S, R, in), B: (S, R, out) holding s * B^T); rows of samples in no group are left as
        they are. x (N, in) and out (N, out) with N = samples x rows_per_sample, the widths of the bound
        stacks; requires `applies(x, out)`."""
        status = _KERNELS.handle.mixed_lora(
            x.data_ptr(), out.data_ptr(), *self._factors, rows_per_sample, *self._sizes, int(accumulate),
            torch.get_num_threads(),
        )  # fmt: skip
        if status != 0:
            raise MemoryError("peftkit's mixed-adapter kernel could not allocate its work buffers")
