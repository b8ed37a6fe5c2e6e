"""Fast paths of a LoRA Linear: the formula `y = base(x) + s * B(A(dropout(x)))` with fewer temporaries.

Each path computes what the op-by-op formula (`LoraLayer._adapter_output`) computes, for a *plain* adapter
only (`is_plain_adapter`: no variant, a float scaling); every other adapter, and every case a path does
not cover, keeps the op-by-op formula or its variant's `forward`. The layer asks here first:

- fused training (`fused_training_applies` / `fused_training_forward`): one autograd node for the base
  layer and the adapter, see `_LoraLinear`;
- in-place add (`in_place_add_applies` / `add_in_place`): `result += s * (x A^T) B^T` as one `addmm`.

Mixed-adapter batches (`adapter_names=`) have their own file, mixed_batch.py.

The fused training node. The unfused formula, run op by op under autograd, allocates two output-sized
tensors per layer and step that it does not need (the out-of-place sum with the adapter's output, and a
copy of the output gradient in its backward) and two input-sized ones (the adapter's share of the input
gradient, then the sum of both shares). On CPU those temporaries cost more than the rank-r matmuls
themselves. The node (frozen W and b, an `nn.Linear` or transformers' `Conv1D`, which stores `W^T`) makes
one output-sized tensor in forward and one input-sized one in backward, each the sum of both terms:

    forward:   h = d(x) A^T;  y = h (s B^T) (+ b);  y += x W^T
    backward:  dh = s dy B;  dB = s (h^T dy)^T;  dA = dh^T d(x);  dx = (dh A when d is the identity) + dy W

The base GEMMs add into the adapter's terms (beta = 1) rather than the rank-r terms into the base output:
inside a compute-bound GEMM that read of the output costs little, where a rank-r update after it is a
pass of its own over an output-sized tensor.

The rank-r products, those that read x or dy (h, dh, dA, dB) and those that write an output- or
input-sized term (h (s B^T), dh A), run in the native kernels of `_masked_lowrank` where they apply and
pay (float32, an x86 CPU with AVX2, 512 features and 256 tokens or more), else in torch's matmul.

peftkit's dropout (`AdapterDropout`) is applied inside the node, `d(x) = k x * keep` (k = 1 / (1 - p)),
without a pass of its own over the input: k joins the scaling (`y = h (s k B^T) + ...`, dh = s k dy B), and
`keep` is applied by one of two means (`_in_node_dropout`):
- `_KernelDrop`: the native kernels (`tuners/_masked_lowrank.c`, float32 on an x86 CPU with AVX2, built
  with the machine's C compiler) draw the mask and apply it inside the three products that read x
  (`h`, `dA`, the masked `dh A`), each masking a block of rows in L1 as it goes. The dropout then costs
  about what those rank-r products cost without it (bench/bench_training_block.py).
- `_SparseDrop`, at rates up to 0.25 (torch ops, any float dtype): `d(x) = k (x - S)`, S the values at
  the dropped positions as a sparse matrix; `h = x A^T - S A^T`; `dx += dh A` less `(dh A)[S]`;
  `dA = dh^T (x - S)` from a copy of x with the dropped values zeroed, made in backward and freed right
  after. Each sparse term is `dropped values x r` multiply-adds, but in memory nearly a pass over the
  input (at p = 0.05 more than half of its cache lines hold a dropped value): ~2 ms per projection on
  the benchmark's block, against 0.5-0.9 ms with the kernels (bench/RESULTS.md).
Any other dropout runs before the node and `d(x)` gets its gradient `dh A` as an input of its own.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_internals

from .. import _masked_lowrank
from .._dropout import AdapterDropout, drop_positions


def is_plain_adapter(layer: Any, name: str) -> bool:
    """Whether adapter `name` of `layer` is plain LoRA, the only kind the fast paths compute: no variant
    (DoRA, aLoRA, bd-LoRA, ...: see variants.py) and a float scaling (hotswap may make it a tensor)."""
    return name not in layer.lora_variant and not torch.is_tensor(layer.scaling[name])


# ----- fused training -----
def fused_training_applies(layer: Any, active: list[str], x: torch.Tensor, args: tuple, kwargs: dict) -> bool:
    """Whether `layer` can run `active` through the fused training node for input `x`."""
    if len(active) != 1 or args or kwargs or not (layer.training and torch.is_grad_enabled()):
        return False
    name = active[0]
    base = layer.base_layer
    if layer.casts_adapter_output:  # a quantized base (bitsandbytes, torchao, HQQ): its weight is packed
        return False
    if type(base) not in _base_types() or base.weight.requires_grad:
        return False
    if base.bias is not None and base.bias.requires_grad:
        return False
    # hooks on the base layer (or global ones) would be skipped by calling its weight directly
    if base._forward_hooks or base._forward_pre_hooks or _global_hooks():
        return False
    if not is_plain_adapter(layer, name) or layer.lora_B[name].bias is not None:
        return False
    lora_A, lora_B = layer.lora_A[name], layer.lora_B[name]
    dtype = base.weight.dtype
    same_dtype = x.dtype == dtype == lora_A.weight.dtype == lora_B.weight.dtype
    return same_dtype and x.is_floating_point() and not torch.is_autocast_enabled(x.device.type)


def _base_types() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D  # GPT-2 style: y = x W + b, weight stored (in, out)

    return (nn.Linear, Conv1D)


def _global_hooks() -> bool:
    return bool(module_internals._global_forward_hooks or module_internals._global_forward_pre_hooks)


def fused_training_forward(layer: Any, name: str, x: torch.Tensor) -> torch.Tensor:
    """The layer's training output for adapter `name` (requires `fused_training_applies(...)`)."""
    base = layer.base_layer
    dropout = layer.lora_dropout[name]
    drop = _in_node_dropout(dropout, x)
    # peftkit's dropout is applied inside the node where it can be; any other dropout runs before it,
    # under autograd
    dropped = None if drop is not None or isinstance(dropout, nn.Identity) else dropout(x)
    factors = layer.lora_A[name].weight, layer.lora_B[name].weight
    weight_in_out = base.weight.t() if type(base) is nn.Linear else base.weight  # (in, out) for both
    return _LoraLinear.apply(x, dropped, drop, weight_in_out, base.bias, *factors, layer.scaling[name])


_SPARSE_MAX_RATE = 0.25  # above it the sparse corrections cost more than masking the input
_SPARSE_DTYPES = (torch.float32, torch.float64)  # torch's sparse CSR kernels on CPU


def _in_node_dropout(dropout: nn.Module, x: torch.Tensor) -> _InNodeDrop | None:
    """How the node applies `dropout` to `x` itself: in the native kernels (the same mask as
    `AdapterDropout` draws there), as sparse corrections, or not at all (None: it runs before the node)."""
    if not (isinstance(dropout, AdapterDropout) and dropout.training and dropout.draws_positions(x)):
        return None
    if _masked_lowrank.applies(x):
        return _KernelDrop(dropout.p)
    if dropout.p <= _SPARSE_MAX_RATE and x.dtype in _SPARSE_DTYPES:
        return _SparseDrop(dropout.p)
    return None


# ----- in-place add -----
def in_place_add_applies(layer: Any, name: str) -> bool:
    """Whether adapter `name` may be added by `add_in_place` (a layer that casts the adapter's output to
    the base output's dtype before adding it, as over bitsandbytes, keeps that order op by op)."""
    return not layer.casts_adapter_output and is_plain_adapter(layer, name)


def add_in_place(layer: Any, name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    """`result + s * (x A^T) B^T (+ s b_B)`, the second product as one `addmm` into `result` (in place
    when autograd does not need `result`): no extra full-size tensors."""
    scaling = layer.scaling[name]
    lora_A, lora_B = layer.lora_A[name], layer.lora_B[name]
    x = layer._cast_input_dtype(x, lora_A.weight.dtype)
    if layer.training:  # dropout is a no-op in eval: skip even the call
        x = layer.lora_dropout[name](x)
    hidden = F.linear(x, lora_A.weight)
    if hidden.dtype != result.dtype or not result.is_contiguous():
        # mixed precision: add in the adapter's precision, as the unfused formula does
        return result + lora_B(hidden) * scaling
    flat_result, flat_hidden = result.view(-1, result.shape[-1]), hidden.reshape(-1, hidden.shape[-1])
    if torch.is_grad_enabled() and (result.requires_grad or hidden.requires_grad):
        # autograd: out of place (an in-place update of a view would cost a full copy in backward)
        fused = torch.addmm(flat_result, flat_hidden, lora_B.weight.t(), alpha=scaling).view(result.shape)
    else:
        fused = result
        flat_result.addmm_(flat_hidden, lora_B.weight.t(), alpha=scaling)
    if lora_B.bias is not None:
        fused = fused + lora_B.bias * scaling
    return fused


# the native products beat torch's matmul (MKL) from this width and this many tokens up; below they tie
# or lose: narrower, per-op timings inside a training step; fewer tokens, the calls' fixed cost (work
# buffers, the thread team) outweighs what they save (bench/RESULTS.md, 2026-12-07, fifth and sixth
# sessions)
_NATIVE_MIN_WIDTH = 512
_NATIVE_MIN_TOKENS = 256


def _native(x: torch.Tensor) -> bool:
    """Whether a product that reads the (tokens, features) `x` as it is (contiguous) runs in the native
    kernels."""
    return x.is_contiguous() and _native_shape(x.shape[0], x)


def _native_shape(tokens: int, wide: torch.Tensor) -> bool:
    """Whether a product over `tokens` rows whose wide operand is `wide` runs in the native kernels."""
    # not under autograd (a double backward): the kernels have no derivative of their own
    native = tokens >= _NATIVE_MIN_TOKENS and wide.shape[-1] >= _NATIVE_MIN_WIDTH
    return native and not torch.is_grad_enabled() and _masked_lowrank.applies(wide)


def _times_factor_t(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """`x F^T` for a 2-D x and a rank-r factor F (r, features): in the native kernels where they pay
    (`_native`: up to a third faster than torch's matmul for such a skinny product, which MKL runs far
    below the machine's FMA rate), else torch's matmul."""
    return _masked_lowrank.lowrank_product(x, factor) if _native(x) else x @ factor.t()


def _small_t_times(small: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`S^T x` for a 2-D x and a (tokens, r) S: a factor's gradient, in the native kernels where they pay,
    else torch's matmul."""
    if small.dtype == x.dtype and _native(x):
        return _masked_lowrank.masked_factor_grad(x, None, small)
    return small.t() @ x


def _expand(small: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """`S F` for a (tokens, r) S and a rank-r factor F (r, features), a new tensor: in the native kernels
    where they pay (they write the wide result a register block at a time), else torch's matmul."""
    if small.dtype == factor.dtype and _native_shape(small.shape[0], factor):
        return _masked_lowrank.lowrank_expand(small, factor)
    return small @ factor


def _output_grads(
    grad: torch.Tensor, lora_B: torch.Tensor, hidden: torch.Tensor, needs_B: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`dy B` and, where B needs a gradient, `h^T dy` (unscaled): in one pass over dy in the native kernels
    where they pay. With the small factor on the left torch's GEMM streams dy once, in its own layout
    (~25% faster than `dy^T h` for a 1536-wide output, measured on CPU)."""
    if not needs_B:
        return _times_factor_t(grad, lora_B.t()), None
    if _native(grad) and hidden.dtype == grad.dtype:
        return _masked_lowrank.output_grads(grad, lora_B, hidden)
    return grad @ lora_B, hidden.t() @ grad


class _NoDrop:
    """The adapter's input as the node gets it (no dropout, or one run before the node)."""

    keep_scale = 1.0

    def hidden(self, flat_x: torch.Tensor, lora_A: torch.Tensor) -> torch.Tensor:
        """`x A^T`."""
        return _times_factor_t(flat_x, lora_A)

    def factor_grad(self, grad_hidden: torch.Tensor, flat_x: torch.Tensor) -> torch.Tensor:
        """`dh^T x`."""
        return _small_t_times(grad_hidden, flat_x)

    def input_grad(self, grad_hidden: torch.Tensor, lora_A: torch.Tensor) -> torch.Tensor:
        """`dh A`, the adapter's share of the input gradient (a new tensor: the base layer's is added
        into it)."""
        return _expand(grad_hidden, lora_A)


_NO_DROP = _NoDrop()


class _InNodeDrop(_NoDrop):
    """peftkit's dropout at rate p, applied by the node: `x * keep`, kept values scaled by `1 / (1 - p)`."""

    def __init__(self, p: float) -> None:
        self.keep_scale = 1.0 / (1.0 - p)
        self.p = p


class _KernelDrop(_InNodeDrop):
    """The dropout drawn and applied in the native kernels (`_masked_lowrank`): each product masks the
    input in its own pass over it; the mask is kept as one bit per value between forward and backward."""

    def hidden(self, flat_x: torch.Tensor, lora_A: torch.Tensor) -> torch.Tensor:
        """`(x * keep) A^T`, drawing the mask."""
        self.x = flat_x.contiguous()  # the kernels read rows; a view of x when it is contiguous already
        hidden, self.bits = _masked_lowrank.masked_product(self.x, lora_A, self.p)
        return hidden

    def factor_grad(self, grad_hidden: torch.Tensor, flat_x: torch.Tensor) -> torch.Tensor:
        """`dh^T (x * keep)`."""
        return _masked_lowrank.masked_factor_grad(self.x, self.bits, grad_hidden)

    def input_grad(self, grad_hidden: torch.Tensor, lora_A: torch.Tensor) -> torch.Tensor:
        """`(dh A) * keep`."""
        return _masked_lowrank.lowrank_expand(grad_hidden, lora_A, self.bits)


class _SparseDrop(_InNodeDrop):
    """The dropout as the values it drops, a sparse (tokens, in) matrix S: `x * keep = x - S`, from the
    flat positions `drop_positions` draws (sorted). `(x - S) A^T` is `x A^T` less `S A^T`; the input
    gradient's masked part is `dh A` less its values at the dropped positions; `dh^T (x - S)` is taken
    from a copy of x with the dropped values zeroed."""

    def hidden(self, flat_x: torch.Tensor, lora_A: torch.Tensor) -> torch.Tensor:
        """`(x - S) A^T`, drawing the positions."""
        tokens, features = flat_x.shape
        self.positions = drop_positions(flat_x.numel(), self.p)
        rows = self.positions.div(features, rounding_mode="floor")
        cols = self.positions.remainder(features)
        values = flat_x.reshape(-1).index_select(0, self.positions)
        crow = torch._convert_indices_from_coo_to_csr(rows, tokens)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": what is used here is stable
            warnings.simplefilter("ignore")
            self.matrix = torch.sparse_csr_tensor(
                crow, cols, values, (tokens, features), check_invariants=False
            )
        hidden = flat_x @ lora_A.t()
        return hidden.sub_(self.matrix @ lora_A.t())

    def factor_grad(self, grad_hidden: torch.Tensor, flat_x: torch.Tensor) -> torch.Tensor:
        """`dh^T (x - S)`, from a copy of x with the dropped values zeroed (`dh^T S` alone would be a
        scatter-add over the dropped columns, several times slower on CPU than this copy)."""
        # row-major, whatever x's strides: the positions count in x's logical order
        masked = flat_x.clone(memory_format=torch.contiguous_format)
        masked.view(-1).index_put_((self.positions,), masked.new_zeros(()))
        return grad_hidden.t() @ masked

    def input_grad(self, grad_hidden: torch.Tensor, lora_A: torch.Tensor) -> torch.Tensor:
        """`dh A`, less its values at the dropped positions."""
        grad_x = grad_hidden @ lora_A
        dropped = torch.sparse.sampled_addmm(self.matrix, grad_hidden, lora_A, beta=0.0).values()
        return grad_x.view(-1).index_add_(0, self.positions, dropped, alpha=-1.0).view(grad_x.shape)


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        dropped: torch.Tensor | None,
        drop: _InNodeDrop | None,
        weight_in_out: torch.Tensor,
        bias: torch.Tensor | None,
        lora_A: torch.Tensor,
        lora_B: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor:
        """`dropped`: the adapter input from a dropout run outside; or `drop`: the dropout to apply here,
        `h = (x * keep) A^T` without forming `x * keep`, and `y = h (s k B^T) + x W^T` (k = 1 / (1 - p) joins
        the scaling, in backward too); neither: no dropout."""
        flat_x = x.reshape(-1, x.shape[-1])
        adapter_input = flat_x if dropped is None else dropped.reshape(flat_x.shape)
        drop = _NO_DROP if drop is None else drop
        hidden = drop.hidden(adapter_input, lora_A)  # a dropout in the node gets x itself (dropped is None)
        scaling = scaling * drop.keep_scale
        # the adapter's term first, then the base GEMM adds into it (beta = 1): the GEMM's compute hides
        # that read, where adding the rank-r term afterwards would cost a pass of its own over the output
        scaled_B_t = lora_B.t() * scaling  # (r, out): small
        out = _expand(hidden, scaled_B_t) if bias is None else torch.addmm(bias, hidden, scaled_B_t)
        out.addmm_(flat_x, weight_in_out)
        ctx.save_for_backward(adapter_input, hidden, weight_in_out, lora_A, lora_B)
        ctx.drop, ctx.scaling, ctx.input_shape = drop, scaling, x.shape
        ctx.adapter_sees_x = dropped is None  # the adapter's input gradient flows into x's (masked or not)
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple:
        adapter_input, hidden, weight_in_out, lora_A, lora_B = ctx.saved_tensors
        needs_x, needs_dropped, _, _, _, needs_A, needs_B, _ = ctx.needs_input_grad
        drop = ctx.drop
        if isinstance(drop, _KernelDrop) and torch.is_grad_enabled():
            raise RuntimeError(
                "double backward (create_graph=True) through LoRA dropout drawn in peftkit's native kernels "
                "is not supported: set PEFTKIT_NATIVE_KERNELS=0 (torch operators) or lora_dropout=0"
            )
        grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_hidden, grad_B = _output_grads(grad, lora_B, hidden, needs_B)
        grad_hidden.mul_(ctx.scaling)
        grad_A = None
        if needs_A:  # dh^T (x * keep)
            grad_A = drop.factor_grad(grad_hidden, adapter_input)
        grad_B = grad_B.mul_(ctx.scaling).t() if needs_B else None
        grad_x = grad_dropped = None
        if needs_x:
            if ctx.adapter_sees_x:  # through the mask, if the node applies one; the base's added into it
                grad_x = drop.input_grad(grad_hidden, lora_A).addmm_(grad, weight_in_out.t())
            else:
                grad_x = grad @ weight_in_out.t()
            grad_x = grad_x.view(ctx.input_shape)
        if needs_dropped:
            grad_dropped = _NO_DROP.input_grad(grad_hidden, lora_A).view(ctx.input_shape)
        return grad_x, grad_dropped, None, None, None, grad_A, grad_B, None
