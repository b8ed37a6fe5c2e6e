"""Mixed-adapter batches on a LoRA Linear: sample i gets `s_i * B_i A_i x` from its own adapter.

With `adapter_names=` (a `MixedBatch`, built once per call: `tuners/_mixed_batch.py`), a layer stacks the
plain adapters of the batch into a `FactorBank` (A: (S, R, in); B: (S, R, out) holding `s * B^T`, zero
padded to the largest rank R) and adds every sample's adapter with a couple of matmuls, not one pass per
adapter. The bank is kept on the layer and rebuilt only when the batch's adapter set or a factor changes,
so during generation (same adapters at every step) the factors are gathered once per `generate` call, and
each step reads every adapter's factors once: the physical minimum for decoding. How the batch maps onto
the bank (`LayerRouting`) is kept too, for later calls with the same per-sample names: a call then costs
the layer one pass over plain numbers (`_layer_state`, ~1 us per adapter) to see that nothing changed.

What a step computes, for N rows (batch x tokens) over S adapters of rank R (`torch_mixed_lora`):

- few rows over adapters shared by several samples: "dense": `h = x @ A_all^T` over all S*R columns (one
  GEMM reading each factor once), `h *= mask` (a row keeps only its own adapter's R columns),
  `out += h @ B_all` (one GEMM). It computes S times the needed FLOPs: cheap only while that is less
  than copying a factor per sample.
- many rows (prefill), or sample i using slot i (decoding distinct adapters): "per sample", `bmm` twice
  over the factors gathered per sample. The gather copies batch x R x (in + out) values, small beside
  the batch x tokens x in activations; in slot order the stacks are used as they are, without a copy.
  (Decoding 16 distinct r=16 adapters on the 30-layer benchmark, 2 threads: 14 ms a step against
  dense's ~50 ms, where the S-fold FLOPs made the GEMMs compute-bound.)

`choose_strategy` picks by a byte/FLOP estimate. With a plain `nn.Linear` base (no hooks, no autograd),
the adapter's delta is computed first and the base GEMM accumulates onto it (`delta += x W^T`), so the
output is written by the compute-bound GEMM instead of being read and written again by a memory-bound add.

On the CPU (`cpu_mixed_lora`), float32 batches without autograd skip both strategies: the native kernel
of `mixed_lora_native` takes the samples grouped by slot and multiplies each adapter's rows by its own
factors, reading every adapter once and computing only the needed FLOPs, in any slot order (30-layer
benchmark, 2 threads, a decoding step's adapter products: 13.5 ms for 64 rows over 8 adapters, where
dense took 49 and per sample 115; 13 ms for 16 distinct adapters in slot order, per sample 15).

The GPU seam. `MIXED_LORA_KERNELS` maps a device type to the function that adds the bank's adapters to
an output (`MixedLoraKernel`); `cpu_mixed_lora` is the CPU's default and `torch_mixed_lora` (torch
operators) every other device's. A punica / S-LoRA SGMV kernel (segments of rows per adapter, one
launch: what the CPU kernel does with threads) registers for "cuda" with
`register_mixed_lora_kernel("cuda", kernel)` and receives the same bank (contiguous stacked factors,
scaling folded in, slot per sample; `LayerRouting.samples_by_slot()` gives the segments) and rows;
nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as module_internals

from .._mixed_batch import MixedBatch, as_mixed_batch
from . import fast_paths, mixed_lora_native

# A kernel adds (accumulate=True) or writes (False) `out[row] = s B A x[row]` for every row, where row r
# belongs to sample r // rows_per_sample and that sample's slot in the bank is `slots[sample]` (-1: none).
MixedLoraKernel = Callable[[torch.Tensor, torch.Tensor, "FactorBank", "LayerRouting", int, bool], None]


@dataclass
class FactorBank:
    """The plain adapters of a mixed batch on one layer, stacked: slot j holds adapter `names[j]`."""

    names: tuple[str, ...]
    stack_A: torch.Tensor  # (S, R, in)
    stack_B: torch.Tensor  # (S, R, out): s * B^T, rows past an adapter's rank are zero
    key: list  # what the stacks were built from (`_layer_state`): a rebuild is needed when it changes
    held: list[torch.Tensor]  # the factor parameters: alive while the key holds their ids


@dataclass
class LayerRouting:
    """What one layer derives from one `MixedBatch` (kept on the layer while the same routing runs)."""

    serial: int  # the serial of the last MixedBatch that used it
    names: list[str]  # the per-sample adapter names it routes
    state: list  # `_layer_state` of the batch's adapters when it was worked out
    device: torch.device
    bank: FactorBank | None  # None: no sample has a plain adapter on this layer
    slots: torch.Tensor | None  # (batch,) bank slot per sample, -1 for none
    slot_list: list[int]  # the same, as Python ints
    others: dict[str, list[int]]  # adapters with a variant (DoRA, ...): sample indices, per-group formula
    in_order: bool  # sample i uses slot i, for every sample: the stacks are already "gathered"
    without_slot: bool  # some sample has no plain adapter on this layer (slot -1)
    masks: dict[Any, torch.Tensor] = field(default_factory=dict)  # dense masks by (device, dtype)
    grouped: tuple[torch.Tensor, torch.Tensor] | None = None  # the samples by slot
    native: mixed_lora_native.BoundKernel | None = None  # the native kernel bound to bank and grouping

    def samples_by_slot(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(order, starts) of `mixed_lora_native.segments`, worked out once."""
        if self.grouped is None:
            self.grouped = mixed_lora_native.segments(self.slot_list, self.bank.stack_A.shape[0])
        return self.grouped

    def native_kernel(self) -> mixed_lora_native.BoundKernel:
        """The native kernel with this routing's bank and grouping bound, once."""
        if self.native is None:
            self.native = mixed_lora_native.BoundKernel(
                self.bank.stack_A, self.bank.stack_B, self.samples_by_slot()
            )
        return self.native


# ----- the bank -----
def _layer_state(layer: Any, names: tuple[str, ...]) -> list:
    """What the layer's routing and stacked factors of adapters `names` depend on, as plain numbers: per
    adapter its factor parameters (identity, storage, in-place version), its scaling and whether it is
    plain (None: the layer lacks it). Read through the modules' dicts, not `Module.__getattr__`: this
    runs for every adapter of every layer on every call, ~1 us per adapter."""
    modules_A = layer._modules["lora_A"]._modules
    modules_B = layer._modules["lora_B"]._modules
    scalings, variants = layer.scaling, layer.lora_variant
    state: list = []
    for name in names:
        module_A = modules_A.get(name)
        if module_A is None:
            state.append(None)
            continue
        weight_A = module_A._parameters["weight"]
        params_B = modules_B[name]._parameters
        weight_B = params_B["weight"]
        scaling = scalings[name]
        try:
            versions = (weight_A._version, weight_B._version)
        except RuntimeError:  # inference tensors (made under torch.inference_mode) keep no version counter
            versions = (-1, -1)
        state += (
            id(weight_A),
            id(weight_B),
            weight_A.data_ptr(),
            weight_B.data_ptr(),
            *versions,
            id(scaling) if isinstance(scaling, torch.Tensor) else scaling,
            name in variants,
            params_B.get("bias") is None,
        )
    return state


def _build_bank(layer: Any, names: tuple[str, ...], key: tuple) -> FactorBank:
    rank = max(layer.r[name] for name in names)
    first = layer.lora_A[names[0]].weight
    out_features = layer.lora_B[names[0]].weight.shape[0]
    stack_A = first.new_zeros(len(names), rank, first.shape[1])
    stack_B = first.new_zeros(len(names), rank, out_features)
    held = []
    with torch.no_grad():
        for slot, name in enumerate(names):
            weight_A, weight_B = layer.lora_A[name].weight, layer.lora_B[name].weight
            stack_A[slot, : weight_A.shape[0]] = weight_A
            stack_B[slot, : weight_B.shape[1]] = weight_B.t() * layer.scaling[name]
            held += [weight_A, weight_B]
    return FactorBank(names, stack_A, stack_B, key, held)


def factor_bank(layer: Any, names: tuple[str, ...]) -> FactorBank:
    """The stacked factors of `names` (plain adapters of `layer`), rebuilt only when they changed."""
    key = _layer_state(layer, names)
    bank = layer.mixed_factor_bank
    if bank is None or bank.names != names or bank.key != key:
        bank = layer.mixed_factor_bank = _build_bank(layer, names, key)
    return bank


def drop_cached_factors(layer: Any, adapter_name: str | None = None) -> None:
    """Free the layer's stacked factors (those holding `adapter_name`, or all): a bank holds a copy of
    its adapters, which an adapter store unloading one of them wants back."""
    bank = layer.mixed_factor_bank
    if bank is not None and (adapter_name is None or adapter_name in bank.names):
        layer.mixed_factor_bank = None
        layer.mixed_routing = None


def layer_routing(layer: Any, routing: MixedBatch, device: torch.device) -> LayerRouting:
    """`routing` as this layer runs it. Worked out once per routing (the decoding steps of a `generate`
    call share one), and kept for later calls with the same per-sample names while the layer's adapters
    are unchanged (`_layer_state`: the bank then still holds their current factors)."""
    cached = layer.mixed_routing
    if cached is not None and cached.serial == routing.serial:
        return cached
    state = _layer_state(layer, routing.adapters)
    if cached is not None and cached.state == state and cached.names == routing and cached.device == device:
        cached.serial = routing.serial
        return cached
    plain, others = [], {}
    # slots in order of first appearance: a batch of distinct adapters then has sample i in slot i, and
    # the per-sample strategy uses the stacks as they are instead of gathering them
    for name in dict.fromkeys(n for n in routing if n in routing.adapters):
        if not layer.has_adapter(name):
            continue
        if fast_paths.is_plain_adapter(layer, name) and layer.lora_B[name].bias is None:
            plain.append(name)
        else:
            others[name] = [i for i, n in enumerate(routing) if n == name]
    kept = layer.mixed_factor_bank
    if kept is not None and len(kept.names) == len(plain) and set(kept.names) == set(plain):
        plain = list(kept.names)  # the same adapters in another order: keep the bank (and its order)
    bank = factor_bank(layer, tuple(plain)) if plain else None
    slot_of = {name: slot for slot, name in enumerate(plain)}
    slot_list = [slot_of.get(name, -1) for name in routing]
    slots = torch.tensor(slot_list, device=device) if plain else None
    in_order = slot_list == list(range(len(plain)))
    without_slot = -1 in slot_list
    layer.mixed_routing = LayerRouting(
        routing.serial, list(routing), state, device, bank, slots, slot_list, others, in_order, without_slot
    )
    return layer.mixed_routing


# ----- the kernels -----
def choose_strategy(rows: int, samples: int, adapters: int, in_order: bool = False) -> str:
    """ "dense" or "per_sample", by a per-factor-element estimate (bytes, plus FLOPs at ~8 per byte):
    dense reads each of the S adapters once (4 bytes) and computes all of them for every row (2 N S
    FLOPs); per sample copies a factor per sample (read, write, read again: 12 bytes each) and computes
    only its own (2 N FLOPs). When sample i uses slot i (`in_order`), per sample reads the stacks as
    they are (4 bytes each, nothing copied)."""
    dense = adapters * (4 + rows / 4)
    per_sample = (4 if in_order else 12) * samples + rows / 4
    return "dense" if dense <= per_sample else "per_sample"


def _dense_mask(routing: LayerRouting, bank: FactorBank, dtype: torch.dtype) -> torch.Tensor:
    """(samples, S*R): 1 on the R columns of the sample's own slot, 0 elsewhere (and for no slot)."""
    device = bank.stack_A.device
    mask = routing.masks.get((device, dtype))
    if mask is None:
        slots, rank = routing.slots, bank.stack_A.shape[1]
        count = bank.stack_A.shape[0]
        one_hot = (slots[:, None] == torch.arange(count, device=device)[None, :]).to(dtype)
        mask = routing.masks[(device, dtype)] = one_hot.repeat_interleave(rank, dim=1)
    return mask


def torch_mixed_lora(
    x: torch.Tensor,
    out: torch.Tensor,
    bank: FactorBank,
    routing: LayerRouting,
    rows_per_sample: int,
    accumulate: bool,
) -> None:
    """The default kernel (torch operators): x (N, in), out (N, out), N = samples x rows_per_sample."""
    samples, count, rank = len(routing.slot_list), bank.stack_A.shape[0], bank.stack_A.shape[1]
    if choose_strategy(x.shape[0], samples, count, routing.in_order) == "dense":
        hidden = x @ bank.stack_A.view(count * rank, -1).t()
        mask = _dense_mask(routing, bank, hidden.dtype)
        hidden.view(samples, rows_per_sample, -1).mul_(mask[:, None, :])
        flat_B = bank.stack_B.view(count * rank, -1)
        if accumulate:
            out.addmm_(hidden, flat_B)
        else:
            torch.mm(hidden, flat_B, out=out)
        return
    if routing.in_order:
        gathered_A, gathered_B = bank.stack_A, bank.stack_B
    else:
        index = routing.slots.clamp(min=0)
        gathered_A, gathered_B = bank.stack_A[index], bank.stack_B[index]
    if routing.without_slot:  # samples without an adapter here: zero factors (never in_order)
        without = routing.slots < 0
        gathered_A[without] = 0
        gathered_B[without] = 0
    inputs = x.view(samples, rows_per_sample, -1)
    hidden = torch.bmm(inputs, gathered_A.transpose(1, 2))
    out3 = out.view(samples, rows_per_sample, -1)
    if accumulate:
        out3.baddbmm_(hidden, gathered_B)
    else:
        torch.bmm(hidden, gathered_B, out=out3)


def cpu_mixed_lora(
    x: torch.Tensor,
    out: torch.Tensor,
    bank: FactorBank,
    routing: LayerRouting,
    rows_per_sample: int,
    accumulate: bool,
) -> None:
    """The CPU kernel: the native segmented kernel where it applies (float32, AVX2, no autograd), which
    reads each adapter once and computes only its own rows, else `torch_mixed_lora`."""
    if not mixed_lora_native.applies(x, out):
        torch_mixed_lora(x, out, bank, routing, rows_per_sample, accumulate)
        return
    if not accumulate and routing.without_slot:  # rows without an adapter get zeros
        out.zero_()
        accumulate = True
    routing.native_kernel()(x, out, rows_per_sample, accumulate)


MIXED_LORA_KERNELS: dict[str, MixedLoraKernel] = {}


def register_mixed_lora_kernel(device_type: str, kernel: MixedLoraKernel) -> None:
    """Use `kernel` for mixed-adapter LoRA batches on `device_type` ("cuda", ...) instead of
    `torch_mixed_lora` (see the module docstring for its contract)."""
    MIXED_LORA_KERNELS[device_type] = kernel


def _kernel_for(device: torch.device) -> MixedLoraKernel:
    kernel = MIXED_LORA_KERNELS.get(device.type)
    if kernel is None:
        kernel = cpu_mixed_lora if device.type == "cpu" else torch_mixed_lora
    return kernel


# ----- the layer's mixed forward -----
def _plain_linear_base(layer: Any) -> nn.Linear | None:
    """The base layer when it is a plain `nn.Linear` that may be applied through its weight directly."""
    base = layer.base_layer
    if type(base) is not nn.Linear or base._forward_hooks or base._forward_pre_hooks:
        return None
    if module_internals._global_forward_hooks or module_internals._global_forward_pre_hooks:
        return None
    return base


def mixed_forward(
    layer: Any, x: torch.Tensor, adapter_names: list[str], args: tuple, kwargs: dict
) -> torch.Tensor | None:
    """The layer's output for a mixed batch, or None when this path does not apply (the framework's
    per-group loop then runs)."""
    if x.dim() < 2 or args or kwargs:
        return None
    routing_all = as_mixed_batch(adapter_names)
    if len(routing_all) != x.shape[0]:
        return None
    routing = layer_routing(layer, routing_all, x.device)
    bank = routing.bank
    if bank is None:
        return None
    rows_per_sample = 1
    for size in x.shape[1:-1]:
        rows_per_sample *= size
    flat_x = layer._cast_input_dtype(x, bank.stack_A.dtype).reshape(-1, x.shape[-1])
    kernel = _kernel_for(flat_x.device)
    no_grad = not (torch.is_grad_enabled() and (x.requires_grad or layer.base_layer.weight.requires_grad))
    base = _plain_linear_base(layer)
    same_dtype = base is not None and base.weight.dtype == flat_x.dtype == x.dtype
    if no_grad and same_dtype:
        # the delta first, then the base GEMM accumulates onto it: the output is written once
        out = flat_x.new_empty(flat_x.shape[0], bank.stack_B.shape[-1])
        kernel(flat_x, out, bank, routing, rows_per_sample, False)
        out.addmm_(flat_x, base.weight.t())
        if base.bias is not None:
            out.add_(base.bias)
        result = out.view(*x.shape[:-1], out.shape[-1])
    else:
        result = layer.base_layer(x)
        flat_out = result.reshape(-1, result.shape[-1])
        if no_grad and flat_out.dtype == flat_x.dtype and result.is_contiguous():
            kernel(flat_x, flat_out, bank, routing, rows_per_sample, True)
        else:  # autograd or mixed precision: out of place, added in the adapter's precision
            delta = flat_x.new_zeros(flat_out.shape)
            kernel(flat_x, delta, bank, routing, rows_per_sample, True)
            result = (flat_out + delta).to(result.dtype).view(result.shape)
    for name, indices in routing.others.items():  # adapters with a variant: the per-group formula
        result = _add_group(layer, name, indices, x, result)
    return result


def _add_group(
    layer: Any, name: str, indices: list[int], x: torch.Tensor, result: torch.Tensor
) -> torch.Tensor:
    rows = torch.tensor(indices, device=result.device)
    sub_base = result[rows]
    pure = sub_base.clone() if layer._needs_base_result(name) else sub_base
    updated = layer._apply_adapter(name, x[rows], sub_base, pure).to(result.dtype)
    return result.index_copy(0, rows, updated)


__all__ = [
    "MIXED_LORA_KERNELS",
    "FactorBank",
    "LayerRouting",
    "MixedLoraKernel",
    "choose_strategy",
    "cpu_mixed_lora",
    "drop_cached_factors",
    "factor_bank",
    "mixed_forward",
    "register_mixed_lora_kernel",
    "torch_mixed_lora",
]
