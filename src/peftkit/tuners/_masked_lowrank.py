"""Adapter input dropout drawn and applied inside native CPU kernels (`_masked_lowrank.c`), and the same
kernels' plain rank-r products.

The kernels draw the dropout mask from a counter-based hash (a seed from torch's default generator, so
`torch.manual_seed` governs it) and apply it in the same pass that uses the input:

- `dropout(x, p)`: `x * keep / (1 - p)` with its gradient (`AdapterDropout` on float32 CPU inputs);
- `masked_product(x, A, p)`: `h = (x * keep) A^T` and the mask, as bits (LoRA's training node, forward);
- `masked_factor_grad(x, bits, dh)`: `dh^T (x * keep)`, and `lowrank_expand(dh, A, bits)`:
  `(dh A) * keep` (its backward);
- `lowrank_product(x, F)`: `x F^T`, `masked_factor_grad(x, None, S)`: `S^T x`, `lowrank_expand(S, F)`:
  `S F`, and `output_grads(dy, B, h)`: `dy B` and `h^T dy` in one pass over dy, without a mask (the LoRA
  node's other rank-r products, where they beat torch's matmul).

So the LoRA node's dropout costs about what the rank-r products cost without it, instead of passes of its
own over the input. For the same seed and shape every function draws the same mask. Where the kernels do
not apply (`applies`: float32 on a CPU, the last dimension a multiple of 8, a library built for this
machine by `utils.native_build`), callers use the positions drawn by `_dropout.drop_positions`.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..utils import cpu_kernels

_SOURCE = Path(__file__).with_name("_masked_lowrank.c")
_RANK_STEP = 16  # the kernels work on the rank in blocks of 16: A, A^T and dh are padded with zeros

_ptr, _i64, _u64, _u32, _f32, _i32 = (
    ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_float, ctypes.c_int,
)  # fmt: skip
_SIGNATURES = {
    "dropout_draw": [_ptr, _ptr, _ptr, _i64, _i64, _u64, _u32, _f32, _i32],
    "dropout_apply": [_ptr, _ptr, _ptr, _i64, _i64, _f32, _i32],
    "masked_product": [_ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _i64, _u64, _u32, _i32],
    "masked_factor_grad": [_ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _i32],
    "lowrank_expand": [_ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _i32],
    "output_grads": [_ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _i64, _i32],
}


_KERNELS = cpu_kernels.KernelLibrary(_SOURCE, _SIGNATURES)
available = _KERNELS.available
unavailable_reason = _KERNELS.unavailable_reason


def applies(x: torch.Tensor) -> bool:
    """Whether dropout of `x` runs in the kernels here."""
    return (
        x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.dim() > 0
        and x.shape[-1] % 8 == 0
        and x.numel() > 0
        and available()
    )


def _call(name: str, *arguments: object) -> None:
    if getattr(_KERNELS.handle, name)(*arguments, torch.get_num_threads()) != 0:
        raise MemoryError(f"peftkit's dropout kernel {name} could not allocate its work buffer")


def _draw_seed() -> int:
    return int(torch.empty((), dtype=torch.int64).random_())  # 63 bits from torch's default generator


def _threshold(p: float) -> int:
    return min(round(p * 2.0**32), 2**32 - 1)  # drop where the 32-bit hash is below it


def _empty_bits(rows: int, features: int) -> torch.Tensor:
    return torch.empty(rows, features // 8, dtype=torch.uint8)


def kept(bits: torch.Tensor, features: int) -> torch.Tensor:
    """The boolean keep mask (rows, features) that `bits` (one bit per value, 1 = dropped) stores."""
    shifts = torch.arange(8, dtype=torch.uint8)
    return (bits.unsqueeze(-1).bitwise_right_shift(shifts).bitwise_and(1) == 0).reshape(-1, features)


class _MaskedDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:  # type: ignore[override]
        flat = x.contiguous().view(-1, x.shape[-1])  # drops count in x's logical (row-major) order
        out, bits, scale = torch.empty_like(flat), _empty_bits(*flat.shape), 1.0 / (1.0 - p)
        _call("dropout_draw", flat.data_ptr(), out.data_ptr(), bits.data_ptr(), *flat.shape,
              _draw_seed(), _threshold(p), scale)  # fmt: skip
        ctx.save_for_backward(bits)
        ctx.scale = scale
        return out.view(x.shape)

    @staticmethod
    @once_differentiable  # the kernel is not differentiable again: double backward raises, never zeros
    def backward(ctx, grad: torch.Tensor) -> tuple:  # type: ignore[override]
        (bits,) = ctx.saved_tensors
        flat = grad.contiguous().view(-1, grad.shape[-1])
        out = torch.empty_like(flat)
        _call("dropout_apply", flat.data_ptr(), out.data_ptr(), bits.data_ptr(), *flat.shape, ctx.scale)
        return out.view(grad.shape), None


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """`x * keep / (1 - p)`, keep ~ Bernoulli(1 - p) per value, differentiable (requires `applies(x)`)."""
    return _MaskedDropout.apply(x, p)


def masked_product(flat_x: torch.Tensor, lora_A: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`(x * keep) A^T` for a contiguous (tokens, in) `flat_x` and A (r, in), and the mask's bits."""
    bits = _empty_bits(*flat_x.shape)
    return _row_product(flat_x, lora_A, bits, _draw_seed(), _threshold(p)), bits


def lowrank_product(flat_x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """`x F^T` for a contiguous (tokens, in) `flat_x` and a factor F (r, in), no mask: LoRA's `x A^T` and
    `dy B` (F = B^T), about twice as fast as torch's matmul for r <= 16 where x is not in cache."""
    return _row_product(flat_x, factor, None, 0, 0)


def _row_product(
    flat_x: torch.Tensor, factor: torch.Tensor, bits: torch.Tensor | None, seed: int, threshold: int
) -> torch.Tensor:
    rank = factor.shape[0]
    factor_t = _rank_padded(factor.t(), dim=1)  # (in, padded rank)
    product = flat_x.new_empty(flat_x.shape[0], rank)
    _call("masked_product", flat_x.data_ptr(), factor_t.data_ptr(), product.data_ptr(), _address(bits),
          *flat_x.shape, rank, factor_t.shape[1], seed, threshold)  # fmt: skip
    return product


def _address(bits: torch.Tensor | None) -> int | None:
    return None if bits is None else bits.data_ptr()  # NULL: no mask


def _rank_padded(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """`tensor` (2-D, detached: the kernels read its memory) with zeros appended along its rank dimension
    `dim` up to a multiple of 16, contiguous."""
    tensor = tensor.detach()
    missing = -tensor.shape[dim] % _RANK_STEP
    padding = (0, missing) if dim == 1 else (0, 0, 0, missing)
    return (F.pad(tensor, padding) if missing else tensor).contiguous()


def masked_factor_grad(
    flat_x: torch.Tensor, bits: torch.Tensor | None, grad_hidden: torch.Tensor
) -> torch.Tensor:
    """`dh^T (x * keep)` for the mask in `bits`, or `dh^T x` where `bits` is None: the gradient of A
    (r, in), or, with h and dy, of B (transposed)."""
    rank = grad_hidden.shape[1]
    padded_grad = _rank_padded(grad_hidden, dim=1)
    grad_A = flat_x.new_empty(padded_grad.shape[1], flat_x.shape[1])
    _call("masked_factor_grad", flat_x.data_ptr(), _address(bits), padded_grad.data_ptr(), grad_A.data_ptr(),
          *flat_x.shape, padded_grad.shape[1])  # fmt: skip
    return grad_A[:rank]


def output_grads(
    grad: torch.Tensor, lora_B: torch.Tensor, hidden: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(dy B, h^T dy)` for a contiguous (tokens, out) `grad` dy, B (out, r) and h (tokens, r), in one pass
    over dy: the hidden gradient (before the scaling) and B's gradient transposed (r, out)."""
    rank = lora_B.shape[1]
    padded_B, padded_hidden = _rank_padded(lora_B, dim=1), _rank_padded(hidden, dim=1)
    grad_hidden = grad.new_empty(grad.shape[0], rank)
    grad_B_t = grad.new_empty(padded_B.shape[1], grad.shape[1])
    _call("output_grads", grad.data_ptr(), padded_B.data_ptr(), padded_hidden.data_ptr(), grad_hidden.data_ptr(),
          grad_B_t.data_ptr(), *grad.shape, rank, padded_B.shape[1])  # fmt: skip
    return grad_hidden, grad_B_t[:rank]


def lowrank_expand(
    small: torch.Tensor, factor: torch.Tensor, bits: torch.Tensor | None = None
) -> torch.Tensor:
    """`S F`, a new (tokens, d) tensor, for a contiguous (tokens, r) S and a factor F (r, d), with the values
    the mask in `bits` drops zeroed (`bits` None: no mask): LoRA's `(dh A) * keep`, the adapter's share of
    the input gradient, and the forward's `h (s B^T)`. Writing the wide side a 6 x 16 block at a time, it
    runs 25-45% faster than torch's matmul for r <= 16."""
    padded_small, padded_factor = _rank_padded(small, dim=1), _rank_padded(factor, dim=0)
    product = small.new_empty(small.shape[0], factor.shape[1])
    _call("lowrank_expand", product.data_ptr(), _address(bits), padded_small.data_ptr(), padded_factor.data_ptr(),
          *product.shape, padded_small.shape[1])  # fmt: skip
    return product
