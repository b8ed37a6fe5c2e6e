"""BOFT layers: the weight is rotated on its input side by a product of butterfly factors, then rescaled
per output channel.

    W' = (W_flat B_0 B_1 ... B_{m-1}) * s,      B_j = P_j D_j P_j^T,      D_j = diag(R_j1 .. R_jn)
    R_ji = (I + Q_ji)(I - Q_ji)^-1,             Q_ji = (U_ji - U_ji^T) / 2

`U` is `boft_R` (`(m, n, b, b)`: m factors of n blocks of size b), `s` is `boft_s` (one scale per output
channel), `W_flat` the weight as `(out, in)` (a Conv2d kernel flattened to `(out, C*k*k)`). `P_0 = I`;
`P_j` (j >= 1) is the butterfly permutation of stride `b * 2^j`: within each group of `b * 2^j` features
it lists the even half-blocks (of size b/2) first, then the odd ones, so the blocks of factor j pair
features that factor j-1 kept apart. `(P D P^T)[i, k] = D[perm(i), perm(k)]`.

The forward runs the base operation with `W'` (the framework's `adapts_weight_in_forward`), so merged and
unmerged outputs agree by construction; unmerging applies the inverse factors in reverse and `1/s`. In
training, `boft_dropout` replaces `int(p * n)` random blocks of one random factor by the identity (the
forward only, never a merge).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from torch import nn

from .._linalg import solve
from .._quantized import quantization_backend
from ..tuners_utils import BaseTunerLayer


def cayley_blocks(params: torch.Tensor) -> torch.Tensor:
    """`(I + Q)(I - Q)^-1` for each block of `params`, `Q` its skew-symmetric part."""
    q = 0.5 * (params - params.transpose(-1, -2))
    eye = torch.eye(q.shape[-1], device=q.device, dtype=q.dtype).expand_as(q)
    return solve(eye - q, eye + q)  # (I - Q)^-1 (I + Q) = (I + Q)(I - Q)^-1: they commute


@lru_cache(maxsize=256)
def butterfly_permutation(features: int, block_size: int, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(perm, inverse perm) of butterfly factor `factor` >= 1 (module docstring), as CPU index tensors."""
    half, group = block_size // 2, block_size * 2**factor
    chunks = torch.arange(features).reshape(features // group, group // half, half)
    perm = torch.cat([chunks[:, 0::2], chunks[:, 1::2]], dim=1).flatten()
    return perm, torch.argsort(perm)


class BOFTLayer(BaseTunerLayer, nn.Module):
    """A BOFT layer on `nn.Linear` or `nn.Conv2d`: its forward uses the rotated, rescaled weight."""

    adapter_layer_names = ("boft_R", "boft_s")
    other_param_names = ("boft_block_size", "boft_block_num", "boft_dropout")
    adapts_weight_in_forward = True

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        nn.Module.__init__(self)
        self._init_tuner_layer(base_layer)
        self.boft_R = nn.ParameterDict({})
        self.boft_s = nn.ParameterDict({})
        self.boft_block_size: dict[str, int] = {}
        self.boft_block_num: dict[str, int] = {}
        self.boft_dropout: dict[str, float] = {}
        self.fan_in_fan_out = kwargs.pop("fan_in_fan_out", False)
        base = self.get_base_layer()
        conv = isinstance(base, nn.Conv2d)
        self.in_features = (
            base.in_channels * base.kernel_size[0] * base.kernel_size[1] if conv else base.in_features
        )
        self.out_features = base.out_channels if conv else base.out_features
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, **kwargs)

    def _check_blocks(self, block_size: int, block_num: int, factors: int, given: str) -> None:
        dim = (
            "Convolutional kernel dimension"
            if isinstance(self.get_base_layer(), nn.Conv2d)
            else "in_features"
        )
        if block_size * block_num != self.in_features:
            value = block_size if given == "boft_block_size" else block_num
            raise ValueError(f"{dim} ({self.in_features}) must be divisible by {given} ({value})!")
        if factors > 1 and block_size % 2:
            raise ValueError(f"boft_block_size ({block_size}) must be an even number!")
        if self.in_features % (block_size * 2 ** (factors - 1)):
            raise ValueError(
                f"Invalid combination of {dim} ({self.in_features}), boft_n_butterfly_factor ({factors}) and "
                f"boft_block_size ({block_size})! The butterfly of {factors} factors spans block_size * "
                f"2^{factors - 1} = {block_size * 2 ** (factors - 1)} features, which must divide {self.in_features}."
            )

    def update_layer(
        self,
        adapter_name: str,
        boft_block_size: int = 4,
        boft_block_num: int = 0,
        boft_n_butterfly_factor: int = 1,
        boft_dropout: float = 0.0,
        init_weights: bool = True,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create adapter `adapter_name`: `boft_n_butterfly_factor` factors of blocks of `boft_block_size`
        (or of `boft_block_num` blocks)."""
        given = "boft_block_size" if boft_block_size else "boft_block_num"
        if boft_block_size:
            boft_block_num = self.in_features // boft_block_size
        else:
            boft_block_size = self.in_features // boft_block_num
        self._check_blocks(boft_block_size, boft_block_num, boft_n_butterfly_factor, given)
        self.boft_block_size[adapter_name] = boft_block_size
        self.boft_block_num[adapter_name] = boft_block_num
        self.boft_dropout[adapter_name] = boft_dropout
        conv = isinstance(self.get_base_layer(), nn.Conv2d)
        scale_shape = (1, self.out_features) if conv else (self.out_features, 1)
        shape = (boft_n_butterfly_factor, boft_block_num, boft_block_size, boft_block_size)
        self.boft_R[adapter_name] = nn.Parameter(torch.zeros(shape))
        self.boft_s[adapter_name] = nn.Parameter(torch.ones(scale_shape))
        if not init_weights:
            nn.init.normal_(self.boft_R[adapter_name], mean=0.0, std=0.1)
            nn.init.normal_(self.boft_s[adapter_name], mean=1.0, std=0.1)
        self._finish_new_adapter(adapter_name, inference_mode)

    def _blocks(self, adapter_name: str, dropout: bool = False) -> torch.Tensor:
        """The `(m, n, b, b)` rotation blocks; with `dropout`, `int(p * n)` random blocks of one random
        factor are the identity."""
        blocks = cayley_blocks(self.boft_R[adapter_name])
        rate = self.boft_dropout[adapter_name]
        if dropout and rate > 0:
            factors, num = blocks.shape[:2]
            replaced = torch.zeros(factors, num, dtype=torch.bool, device=blocks.device)
            chosen = torch.randperm(num, device=blocks.device)[: int(rate * num)]
            replaced[torch.randint(factors, (1,)).item(), chosen] = True
            eye = torch.eye(blocks.shape[-1], device=blocks.device, dtype=blocks.dtype)
            blocks = torch.where(replaced[..., None, None], eye, blocks)
        return blocks

    def _apply_factor(self, flat: torch.Tensor, blocks: torch.Tensor, factor: int) -> torch.Tensor:
        """`flat @ P_j D_j P_j^T` for the rows of `flat` (out, in)."""
        if factor:
            perm, inverse = (
                t.to(flat.device) for t in butterfly_permutation(flat.shape[1], blocks.shape[-1], factor)
            )
            flat = flat[:, inverse]
        rotated = torch.einsum("onb,nbc->onc", flat.unflatten(1, (blocks.shape[0], -1)), blocks).flatten(1)
        return rotated[:, perm] if factor else rotated

    def _scales(self, adapter_name: str) -> torch.Tensor:
        return self.boft_s[adapter_name].reshape(-1, 1).float()

    def _merged_weight(self, adapter_name: str, weight: torch.Tensor, dropout: bool = False) -> torch.Tensor:
        flat = weight.float().reshape(weight.shape[0], -1)
        blocks = self._blocks(adapter_name, dropout).float()
        for factor in range(blocks.shape[0]):
            flat = self._apply_factor(flat, blocks[factor], factor)
        return (flat * self._scales(adapter_name)).reshape(weight.shape)

    def _weight_in_forward(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        return self._merged_weight(adapter_name, weight, dropout=self.training)

    def _unmerged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        flat = weight.float().reshape(weight.shape[0], -1) / self._scales(adapter_name)
        inverse = torch.linalg.inv(self._blocks(adapter_name).float())
        for factor in reversed(range(inverse.shape[0])):
            flat = self._apply_factor(flat, inverse[factor], factor)
        return flat.reshape(weight.shape)

    def __repr__(self) -> str:
        return "boft." + super().__repr__()


class Linear(BOFTLayer):
    """BOFT on `nn.Linear`.

    A quantized base layer cannot run with a rotated weight, so there the rotation acts on the input,
    `base(x B^T)`, and the output is rescaled around the bias, `(y - b) * s + b`, as PEFT computes it: the
    same map, with the base layer's own quantized kernel.
    """

    @property
    def adapts_weight_in_forward(self) -> bool:
        return quantization_backend(self.get_base_layer()) is None

    @property
    def transforms_input(self) -> bool:
        return not self.adapts_weight_in_forward

    def _transform_input(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """`x B^T` = `x B_{m-1}^T ... B_0^T`: each factor transposed, the last one first."""
        blocks = self._blocks(adapter_name, dropout=self.training).to(x.dtype).transpose(-1, -2)
        flat = x.reshape(-1, x.shape[-1])
        for factor in reversed(range(blocks.shape[0])):
            flat = self._apply_factor(flat, blocks[factor], factor)
        return flat.reshape(x.shape)

    def _apply_adapter(self, adapter_name, x, result, base_result) -> torch.Tensor:
        scales = self.boft_s[adapter_name].flatten().to(result.dtype)
        bias = self.get_base_layer().bias
        if bias is None:
            return result * scales
        bias = bias.to(result.dtype)
        return (result - bias) * scales + bias


class Conv2d(BOFTLayer):
    """BOFT on `nn.Conv2d` (the kernel flattened to `(out, C*k*k)`)."""
