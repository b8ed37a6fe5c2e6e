"""Block-diagonal LoRA (bd-LoRA): A or B made block-diagonal, for multi-LoRA serving under tensor parallelism.

With `n = nblocks`, a block-diagonal factor `F` of shape (out, in) is `diag(F_1, ..., F_n)` with blocks of
shape (out/n, in/n): block i maps input slice i to output slice i and nothing else. It is stored as
the stack of its blocks, a (out, in/n) matrix, so it has n times fewer parameters than a dense factor:

    bd-A (row-sharded layers: attention output, MLP down):  A: (r, in/n),   blocks (r/n, in/n)
    bd-B (column-sharded layers: q, k, v, MLP up/gate):      B: (out, r/n),  blocks (out/n, r/n)

When the serving engine shards a layer n ways, each shard then needs only its own slice of the
LoRA activations, so the LoRA product needs no extra all-gather/all-reduce. `delta W = s B A` with the
block-diagonal factor expanded (`dense_weight`) is what merging adds.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .layer import Linear
from .sub_configs import BdLoraConfig
from .variants import LoraVariant


class BlockDiagonalLinear(nn.Module):
    """`y = diag(W_1, ..., W_n) x (+ b)`, the blocks stored stacked as `weight` (out, in / n)."""

    def __init__(self, in_features: int, out_features: int, nblocks: int, bias: bool = False) -> None:
        super().__init__()
        if in_features % nblocks or out_features % nblocks:
            raise ValueError(
                f"self.in_features={in_features} or self.out_features={out_features} not divisible by {nblocks}: "
                "block-diagonal LoRA needs the layer's sizes and the rank r to be multiples of nblocks."
            )
        self.in_features, self.out_features, self.nblocks = in_features, out_features, nblocks
        self.weight = nn.Parameter(torch.empty(out_features, in_features // nblocks))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform over each block's fan-in (in / n), PEFT's initialisation."""
        nn.init.kaiming_uniform_(self.weight)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight.shape[1])
            nn.init.uniform_(self.bias, -bound, bound)

    def blocks(self) -> torch.Tensor:
        """The blocks, (n, out / n, in / n)."""
        n = self.nblocks
        return self.weight.view(n, self.out_features // n, self.in_features // n)

    def dense_weight(self) -> torch.Tensor:
        """The full (out, in) block-diagonal matrix."""
        return torch.block_diag(*self.blocks().unbind(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.nblocks
        pieces = x.reshape(*x.shape[:-1], n, self.in_features // n)
        out = torch.einsum("...ni,noi->...no", pieces, self.blocks().to(x.dtype)).reshape(*x.shape[:-1], -1)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nblocks={self.nblocks}"


def check_bdlora_config(config: Any) -> None:
    """Reject combinations bd-LoRA does not define, before any layer is touched."""
    if config.use_dora:
        raise ValueError("Invalid or unsupported variant combination: ('use_bdlora', 'use_dora')")
    init = config.init_lora_weights
    if isinstance(init, str) and init != "gaussian":
        raise ValueError(
            f"init_lora_weights={init!r} cannot be used with block-diagonal LoRA: the initial factors would not be "
            "block-diagonal. Use init_lora_weights=True."
        )


class BdLoraVariant(LoraVariant):
    """bd-LoRA on a Linear: the adapter's A (`side="A"`) or B (`side="B"`) is block-diagonal.

    The formula is LoRA's, with the block-diagonal factor's own forward; the fast paths step aside (they
    read the factors' weights as dense matrices) and `delta_weight` expands the blocks.
    """

    name = "bd-LoRA"
    config_field = "use_bdlora"

    def __init__(self, side: str, nblocks: int, zero_init: bool) -> None:
        self.side, self.nblocks, self.zero_init = side, nblocks, zero_init

    def init(self, layer: Any, adapter_name: str, inference_mode: bool = False) -> None:
        """Replace the dense factor by a block-diagonal one on the same device, in the same dtype, trainable
        as it was; B starts at zero (unless `init_lora_weights=False`), so the adapter starts as a no-op."""
        factors = layer.lora_A if self.side == "A" else layer.lora_B
        old = factors[adapter_name]
        with torch.device(old.weight.device):
            factor = BlockDiagonalLinear(
                old.in_features, old.out_features, self.nblocks, bias=old.bias is not None
            )
        if self.zero_init:
            nn.init.zeros_(factor.weight)
            if factor.bias is not None:
                nn.init.zeros_(factor.bias)
        factor.to(dtype=old.weight.dtype)
        factors[adapter_name] = factor
        factor.requires_grad_(old.weight.requires_grad)

    def delta_weight(self, layer: Any, adapter_name: str) -> torch.Tensor:
        weight_A, weight_B = (_dense(f[adapter_name]) for f in (layer.lora_A, layer.lora_B))
        return layer._delta_from_factors(adapter_name, weight_A, weight_B)


def _dense(factor: nn.Module) -> torch.Tensor:
    """A factor's (out, in) matrix, a block-diagonal one expanded."""
    return factor.dense_weight() if isinstance(factor, BlockDiagonalLinear) else factor.weight


def make_block_diagonal(
    layer: Any, adapter_name: str, module_name: str, config: BdLoraConfig, init: Any
) -> None:
    """Give adapter `adapter_name` of `layer` a block-diagonal A or B, as `config` says for `module_name`."""
    bd_a, bd_b = config.sides(module_name)
    if not (bd_a or bd_b):
        return
    if type(layer).__name__ == "ParamWrapper" or not isinstance(layer, Linear):
        raise ValueError(
            f"Block-diagonal LoRA applies to linear layers only, not to {module_name} ({type(layer).__name__})."
        )
    r, n = layer.r[adapter_name], config.nblocks
    if r % n:
        raise ValueError(
            f"Block-diagonal LoRA needs r divisible by nblocks; got r={r} for {module_name}, nblocks={n}."
        )
    variant = BdLoraVariant("A" if bd_a else "B", n, zero_init=bd_b and init is not False)
    layer.set_lora_variant(adapter_name, variant)
