"""GraLoRA layers: a k x k grid of low-rank updates, one per block of the weight, plus an optional plain LoRA.

The input splits into k chunks x_n (in/k each), the output into k chunks y_j (out/k each). Each input chunk
has its own down-projection A_n (in/k x r) whose r outputs fall into k groups of r/k, one per output chunk;
output chunk j has its up-projection B_j (r x out/k) reading group j of every input chunk:

    y_j += s * sum_n (x_n A_n[:, group j]) B_j[rows of group n]        s = alpha / (r + hybrid_r)
    y   += s * B_h A_h x                                               (hybrid_r > 0: a rank-hybrid_r LoRA)

So block (j, n) of the weight change is `s * (A_n[:, group j] B_j[group n])^T`, of rank r/k, with the
parameter count of one rank-r LoRA in all. `gralora_A` holds the A_n as (k, in/k, r), `gralora_B` the B_j
as (k, r, out/k); `gralora_A_general`/`gralora_B_general` are the hybrid LoRA's layers (identities when
hybrid_r is 0).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .._quantized import weight_shape
from ..tuners_utils import BaseTunerLayer
from .config import GraloraConfig

_HALF = (torch.float16, torch.bfloat16)


def _as_batch_sequence(x: torch.Tensor) -> torch.Tensor:
    """`x` as (batch, sequence, features): a 2-D input is a batch of one-token sequences."""
    if x.ndim == 1:
        return x.view(1, 1, -1)
    if x.ndim == 2:
        return x.unsqueeze(1)
    return x.reshape(-1, *x.shape[-2:])


class GraloraLayer(BaseTunerLayer):
    """State of GraLoRA on one layer: per adapter its block factors, hybrid LoRA, ranks and scaling."""

    adapter_layer_names = ("gralora_A", "gralora_B", "gralora_A_general", "gralora_B_general")
    other_param_names = ("r", "hybrid_r", "alpha", "scaling", "gralora_dropout", "gralora_k")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.r: dict[str, int] = {}
        self.alpha: dict[str, float] = {}
        self.gralora_k: dict[str, int] = {}
        self.hybrid_r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.gralora_dropout = nn.ModuleDict({})
        self.gralora_A = nn.ParameterDict({})
        self.gralora_B = nn.ParameterDict({})
        self.gralora_A_general = nn.ModuleDict({})
        self.gralora_B_general = nn.ModuleDict({})
        self.kwargs = kwargs

    def update_layer(
        self, adapter_name: str, module_name: str, r: int, config: GraloraConfig, inference_mode: bool = False
    ) -> None:
        """Create adapter `adapter_name`: k down- and k up-projections (and the hybrid LoRA's pair).

        The factors are drawn one block at a time, A_n then B_n, each as PEFT draws it (B zero unless
        `init_weights=False`), so a seeded run starts from PEFT's numbers.
        """
        k, hybrid_r = config.gralora_k, config.hybrid_r
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        if hybrid_r < 0:
            raise ValueError(
                f"`hybrid_r` should be a non-negative integer value but the value passed is {hybrid_r}"
            )
        for side, size in (("in_features", self.in_features), ("out_features", self.out_features)):
            if size % k:
                raise ValueError(
                    f"{side} should be divisible by gralora_k, but got {size} and {k} (in {module_name}); choose a "
                    "gralora_k that divides both sizes of the targeted layers."
                )
        down, up = [], []
        for _ in range(k):
            a = torch.empty(r, self.in_features // k)
            b = torch.empty(self.out_features // k, r)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            if config.init_weights:
                nn.init.zeros_(b)
            else:
                nn.init.kaiming_uniform_(b, a=math.sqrt(5))
            down.append(a)
            up.append(b)
        self.gralora_A[adapter_name] = nn.Parameter(torch.stack(down).transpose(1, 2).contiguous())
        self.gralora_B[adapter_name] = nn.Parameter(torch.stack(up).transpose(1, 2).contiguous())
        self.gralora_A_general[adapter_name], self.gralora_B_general[adapter_name] = self._hybrid_pair(
            hybrid_r, config.init_weights
        )
        p = config.gralora_dropout
        self.gralora_dropout[adapter_name] = nn.Dropout(p=p) if p > 0.0 else nn.Identity()
        self.r[adapter_name] = r
        self.alpha[adapter_name] = config.alpha
        self.gralora_k[adapter_name] = k
        self.hybrid_r[adapter_name] = hybrid_r
        self.scaling[adapter_name] = config.alpha / (r + hybrid_r)
        self.module_name = module_name
        self._finish_new_adapter(adapter_name, inference_mode)

    def _hybrid_pair(self, hybrid_r: int, init_weights: bool) -> tuple[nn.Module, nn.Module]:
        """The hybrid LoRA's down and up layers (B zero unless `init_weights=False`), or two identities."""
        if hybrid_r == 0:
            return nn.Identity(), nn.Identity()
        down = nn.Linear(self.in_features, hybrid_r, bias=False)
        up = nn.Linear(hybrid_r, self.out_features, bias=False)
        nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
        if init_weights:
            nn.init.zeros_(up.weight)
        else:
            nn.init.kaiming_uniform_(up.weight, a=math.sqrt(5))
        return down, up

    # ----- forward -----
    def _block_output(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """The grid of block updates applied to `x` (..., in), unscaled: (..., out)."""
        down, up = self.gralora_A[adapter], self.gralora_B[adapter]
        k = self.gralora_k[adapter]
        rank = self.r[adapter]
        x3 = _as_batch_sequence(x)
        batch, length = x3.shape[:2]
        per_chunk = torch.einsum("blni,nir->blnr", x3.reshape(batch, length, k, -1), down)
        # regroup: output chunk j reads group j of every input chunk's r outputs
        regrouped = (
            per_chunk.view(batch, length, k, k, rank // k).transpose(2, 3).reshape(batch, length, k, rank)
        )
        out = torch.einsum("bljr,jro->bljo", regrouped, up)
        return out.reshape(*x.shape[:-1], self.out_features)

    def _parts(self, adapter: str, x: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
        """The scaled block part and (with hybrid_r) the scaled hybrid part, each cast to `dtype`. Dropout
        draws a mask for each part, as PEFT does."""
        dropout, scaling = self.gralora_dropout[adapter], self.scaling[adapter]
        x = self._cast_input_dtype(x, self.gralora_A[adapter].dtype)
        parts = [scaling * self._block_output(adapter, dropout(x)).to(dtype)]
        if self.hybrid_r[adapter] > 0:
            hybrid = self.gralora_B_general[adapter](self.gralora_A_general[adapter](dropout(x)))
            parts.append(scaling * hybrid.to(dtype))
        return parts

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        return sum(self._parts(adapter_name, x, base_result.dtype))

    def _apply_adapter(
        self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, base_result: torch.Tensor
    ) -> torch.Tensor:
        # the parts are added one at a time, so a half-precision result is rounded as in PEFT
        for part in self._parts(adapter_name, x, result.dtype):
            result = result + part
        return result

    # ----- merging -----
    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """The weight change in the base weight's layout ((in, out) for Conv1D), in the factors' dtype."""
        down, up = self.gralora_A[adapter], self.gralora_B[adapter]
        dtype = down.dtype
        upcast = down.device.type == "cpu" and dtype in _HALF  # slow half-precision matmuls on CPU
        if upcast:
            down, up = down.float(), up.float()
        k = self.gralora_k[adapter]
        group = self.r[adapter] // k
        # block (j, n) = (A_n[:, group j] B_j[group n])^T: index A as [n, i, j, s] and B as [j, n, s, o]
        blocks = torch.einsum(
            "nijs,jnso->nijo", down.view(k, -1, k, group), up.view(k, k, group, self.out_features // k)
        )
        delta = blocks.reshape(self.in_features, self.out_features).T
        if self.hybrid_r[adapter] > 0:
            hybrid_down = self.gralora_A_general[adapter].weight
            hybrid_up = self.gralora_B_general[adapter].weight
            delta = delta + (hybrid_up.float() @ hybrid_down.float() if upcast else hybrid_up @ hybrid_down)
        delta = (delta.T if self.fan_in_fan_out else delta) * self.scaling[adapter]
        return delta.to(dtype)

    def __repr__(self) -> str:
        return "gralora." + super().__repr__()


class Linear(GraloraLayer, nn.Module):
    """GraLoRA on `nn.Linear` or transformers' `Conv1D` (`fan_in_fan_out=True`: weight stored as (in, out))."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        module_name: str,
        config: GraloraConfig,
        r: int = 0,
        is_target_conv_1d_layer: bool = False,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        GraloraLayer.__init__(self, base_layer, **kwargs)
        self.fan_in_fan_out = config.fan_in_fan_out
        self.is_target_conv_1d_layer = is_target_conv_1d_layer
        shape = weight_shape(self.get_base_layer())  # as numbers: a 4-bit weight is stored packed
        self.in_features, self.out_features = shape if self.fan_in_fan_out else shape[::-1]
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, module_name, r, config)
