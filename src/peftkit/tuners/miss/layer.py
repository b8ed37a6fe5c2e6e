"""MiSS layers: one small trained shard shared by every shard of the weight (three variants).

Balance (`init_weights=True`; False starts the shard random): the shard `D` is (r, out). Input position i
uses row `i mod r`, so the input is summed over its consecutive r-sized chunks (zero-padded at the end):

    delta_W[o, i] = D[i mod r, o]          y = W x + b + (sum_c x_c) D

Mini (`"mini"`): `D` is (r, mini_r), repeated along the outputs to (r, out); then as balance.

Bat (`"bat"`): `D` is (out/r, r, r), one r x r block per row of r x r blocks of W, and the update depends
on the weight: each block W_ij of W becomes

    W_ij' = W_ij (I + D_i) + D_i           (unmerging: W_ij = (W_ij' - D_i) (I + D_i)^-1)

Bat runs the base layer with the updated weight (the framework's `adapts_weight_in_forward`); balance and
mini add their output. Each adapter keeps its own variant (PEFT uses the first adapter's for all of a layer's
adapters).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...utils.warnings import PeftWarning
from ..tuners_utils import BaseTunerLayer
from .config import MissConfig

_HALF = (torch.float16, torch.bfloat16)


def _row_col_blocks(weight: torch.Tensor, r: int) -> torch.Tensor:
    """(out, in) -> (in/r, out/r, r, r): element [j, i] is the r x r block in row block i, column block j."""
    out_features, in_features = weight.shape
    return weight.reshape(out_features // r, r, in_features // r, r).permute(2, 0, 1, 3)


def _from_row_col_blocks(blocks: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return blocks.permute(1, 2, 0, 3).reshape(shape)


class MissLayer(BaseTunerLayer):
    """State of MiSS on one layer: per adapter its shard, rank, mini rank, dropout and variant."""

    adapter_layer_names = ("miss_block",)
    other_param_names = ("miss_r", "miss_dropout", "miss_mini_r", "miss_init")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.miss_r: dict[str, int] = {}
        self.miss_mini_r: dict[str, int] = {}
        self.miss_init: dict[str, bool | str] = {}
        self.miss_dropout = nn.ModuleDict({})
        self.miss_block = nn.ParameterDict({})
        self.kwargs = kwargs

    @property
    def adapts_weight_in_forward(self) -> bool:
        """A 'bat' adapter changes the weight itself: then the layer runs with the updated weight."""
        return "bat" in self.miss_init.values()

    def update_layer(
        self, adapter_name: str, r: int, config: MissConfig, inference_mode: bool = False, **kwargs: Any
    ) -> None:
        """Create adapter `adapter_name`: its shard, shaped and initialised for `config.init_weights`."""
        variant = config.init_weights
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        if r > self.in_features:
            raise ValueError(f"`r` ({r}) must be less than or equal to in_features ({self.in_features})")
        if variant == "bat":
            if self.in_features % r or self.out_features % r:
                raise ValueError(
                    f"MiSS 'bat' needs the weight ({self.out_features} x {self.in_features}) to divide into r x r "
                    f"blocks, but r={r} does not divide both sizes; choose an r that does."
                )
            shard = torch.zeros(self.out_features // r, r, r)
        elif variant == "mini":
            if self.out_features % config.mini_r:
                raise ValueError(
                    f"MiSS 'mini' repeats its shard along out_features, so out_features ({self.out_features}) must be "
                    f"divisible by mini_r ({config.mini_r}); choose a mini_r that divides it."
                )
            shard = torch.zeros(r, config.mini_r)
        else:
            shard = torch.zeros(r, self.out_features)
            if not variant:
                nn.init.kaiming_uniform_(shard, a=math.sqrt(5))
        self.miss_r[adapter_name] = r
        self.miss_mini_r[adapter_name] = config.mini_r
        self.miss_init[adapter_name] = variant
        p = config.miss_dropout
        self.miss_dropout[adapter_name] = nn.Dropout(p=p) if p > 0.0 else nn.Identity()
        self.miss_block[adapter_name] = nn.Parameter(shard)
        self._finish_new_adapter(adapter_name, inference_mode)

    def scale_layer(self, scale: float) -> None:
        if scale != 1 and any(a in self.miss_block for a in self.active_adapters):
            warnings.warn(
                "Scaling operation for MiSS not supported! Automatically set scale to 1.", PeftWarning
            )

    def unscale_layer(self, scale: float | None = None) -> None:
        if any(a in self.miss_block for a in self.active_adapters):
            warnings.warn("Unscaling operation for MiSS not supported! Keeping scale at 1.", PeftWarning)

    # ----- balance and mini: a shared (r, out) shard -----
    def _shared_shard(self, adapter: str) -> torch.Tensor:
        """The (r, out) shard every input chunk uses (mini's repeated along the outputs)."""
        shard = self.miss_block[adapter]
        if self.miss_init[adapter] == "mini":
            shard = shard.repeat(1, self.out_features // self.miss_mini_r[adapter])
        return shard

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        shard = self._shared_shard(adapter_name)
        r = shard.shape[0]
        padding = -x.shape[-1] % r
        if padding:
            x = F.pad(x, (0, padding))
        x = self.miss_dropout[adapter_name](self._cast_input_dtype(x, shard.dtype))
        return x.reshape(*x.shape[:-1], -1, r).sum(dim=-2) @ shard

    # ----- bat: a block-wise, weight-dependent update -----
    def _bat_shard(self, adapter: str) -> torch.Tensor:
        """The (out/r, r, r) blocks, in fp32 when they are half precision on the CPU (as PEFT computes)."""
        shard = self.miss_block[adapter]
        return shard.float() if shard.device.type == "cpu" and shard.dtype in _HALF else shard

    def _bat_delta(self, adapter: str, weight: torch.Tensor) -> torch.Tensor:
        """`W_ij D_i + D_i` for every block, in the shard's dtype."""
        shard = self._bat_shard(adapter)
        blocks = _row_col_blocks(weight.to(shard.dtype), shard.shape[-1])
        delta = _from_row_col_blocks(blocks @ shard + shard, weight.shape)
        return delta.to(self.miss_block[adapter].dtype)

    def get_delta_weight(self, adapter: str, orig_weight: torch.Tensor | None = None) -> torch.Tensor:
        """The change adapter `adapter` makes to `orig_weight` (default: the base weight), (out, in)."""
        if self.miss_init[adapter] == "bat":
            weight = self._dense_base_weight() if orig_weight is None else orig_weight
            return self._bat_delta(adapter, weight)
        shard = self._shared_shard(adapter)
        r = shard.shape[0]
        return shard.T.repeat(1, -(-self.in_features // r))[:, : self.in_features]

    def _merged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        if self.miss_init[adapter_name] != "bat":
            return super()._merged_weight(adapter_name, weight)
        return weight + self._bat_delta(adapter_name, weight)

    def _unmerged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        if self.miss_init[adapter_name] != "bat":
            return super()._unmerged_weight(adapter_name, weight)
        shard = self._bat_shard(adapter_name)
        eye = torch.eye(shard.shape[-1], device=shard.device, dtype=torch.float32)
        inverse = torch.inverse(eye + shard.float()).to(shard.dtype)
        blocks = _row_col_blocks(weight.to(shard.dtype), shard.shape[-1])
        return _from_row_col_blocks((blocks - shard) @ inverse, weight.shape)

    def __repr__(self) -> str:
        return "miss." + super().__repr__()


class MissLinear(MissLayer, nn.Module):
    """MiSS on `nn.Linear`."""

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: MissConfig, r: int = 0, **kwargs: Any
    ) -> None:
        nn.Module.__init__(self)
        MissLayer.__init__(self, base_layer, **kwargs)
        base = self.get_base_layer()
        self.in_features, self.out_features = base.in_features, base.out_features
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, config)
