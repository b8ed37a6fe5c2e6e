"""VB-LoRA layers: LoRA factors assembled from a bank of vectors shared by every layer.

    y = W x + B A dropout(x),        delta_W = B A

The bank `V` (N x L) lives once per adapter on the tuner (`VBLoRAModel.vblora_vector_bank`, trained).
A (r x in) is cut into `in / L` pieces of length L per row, B (out x r) into `out / L` pieces per
column; each piece is the softmax-weighted sum of the `k` bank vectors its logits rank highest:

    piece = sum_{j in topk(z)} softmax(z_topk)_j V_j        z: the piece's N logits (trained)

The logits are `vblora_logits_A` (r, in/L, N) and `vblora_logits_B` (out/L, r, N); B's pieces run down
its columns: B = pieces(logits_B) (out/L, r, L) -> (out/L, L, r) -> (out, r).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._dropout import input_dropout
from .._linear_kind import set_linear_sizes
from ..tuners_utils import BaseTunerLayer
from .config import VBLoRAConfig

_HALF = (torch.float16, torch.bfloat16)


def mix_topk(logits: torch.Tensor, bank: torch.Tensor, topk: int) -> torch.Tensor:
    """Each row of `logits` (..., N) -> the softmax-weighted sum of its `topk` best bank vectors (..., L)."""
    best, indices = logits.topk(topk, dim=-1)
    return (F.softmax(best, dim=-1).unsqueeze(-1) * bank[indices]).sum(-2)


class VBLoRALayer(BaseTunerLayer):
    """State shared by VB-LoRA layer kinds: the per-layer logits and a reference to the shared bank."""

    adapter_layer_names = ("vblora_logits_A", "vblora_logits_B", "vblora_vector_bank")
    other_param_names = ("r", "topk", "vblora_dropout")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.r: dict[str, int] = {}
        self.topk: dict[str, int] = {}
        self.vblora_dropout = nn.ModuleDict({})
        self.vblora_logits_A = nn.ParameterDict({})
        self.vblora_logits_B = nn.ParameterDict({})
        self.vblora_vector_bank: nn.ParameterDict | None = None  # the tuner's dict, set by update_layer
        self.kwargs = kwargs

    # the shared bank holds every adapter: this layer has an adapter only where it has its logits
    def has_adapter(self, adapter_name: str) -> bool:
        return adapter_name in self.vblora_logits_A

    def _get_available_adapters(self) -> set[str]:
        return set(self.vblora_logits_A.keys())

    def update_layer(
        self,
        adapter_name: str,
        vblora_vector_bank: nn.ParameterDict,
        r: int,
        config: VBLoRAConfig,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create adapter `adapter_name` on this layer: its logits, N(0, init_logits_std)."""
        length = config.vector_length
        if r <= 0:
            raise ValueError(f"`r` {r} should be a positive integer value")
        if config.topk <= 0:
            raise ValueError(f"`topk` {config.topk} should be a positive integer value")
        for name, size in (("in_features", self.in_features), ("out_features", self.out_features)):
            if size % length:
                raise ValueError(f"`{name}` {size} must be divisible by `vector_length` {length}")
        self.r[adapter_name] = r
        self.topk[adapter_name] = config.topk
        self.vblora_dropout[adapter_name] = input_dropout(config.vblora_dropout)
        self.vblora_logits_A[adapter_name] = nn.Parameter(
            torch.zeros(r, self.in_features // length, config.num_vectors)
        )
        self.vblora_logits_B[adapter_name] = nn.Parameter(
            torch.zeros(self.out_features // length, r, config.num_vectors)
        )
        self.vblora_vector_bank = vblora_vector_bank
        self.reset_vblora_logits(adapter_name, config.init_logits_std)
        self._finish_new_adapter(adapter_name, inference_mode)

    def reset_vblora_logits(self, adapter_name: str, init_logits_std: float) -> None:
        """Draw the logits of `adapter_name` from N(0, init_logits_std), A's then B's."""
        if adapter_name in self.vblora_logits_A:
            with torch.no_grad():
                nn.init.normal_(self.vblora_logits_A[adapter_name], 0, init_logits_std)
                nn.init.normal_(self.vblora_logits_B[adapter_name], 0, init_logits_std)

    def _lora_factors(self, adapter: str, upcast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (r x in), B (out x r)) of `adapter`, assembled from the bank (in fp32 with `upcast`)."""
        logits_a, logits_b = self.vblora_logits_A[adapter], self.vblora_logits_B[adapter]
        # files saved with save_only_topk_weights hold -inf logits outside the top k: they cannot train
        if self.training and logits_a[0, 0].isinf().any():
            raise RuntimeError(
                "Found infinity values in VB-LoRA logits. Ensure training was not resumed from a "
                "`save_only_topk_weights` model."
            )
        bank = self.vblora_vector_bank[adapter].to(logits_a.device)
        if upcast:
            logits_a, logits_b, bank = logits_a.float(), logits_b.float(), bank.float()
        topk = self.topk[adapter]
        factor_a = mix_topk(logits_a, bank, topk).reshape(logits_a.shape[0], -1)
        factor_b = mix_topk(logits_b, bank, topk).transpose(1, 2).reshape(-1, logits_b.shape[1])
        return factor_a, factor_b

    def __repr__(self) -> str:
        return "vblora." + super().__repr__()


class Linear(VBLoRALayer, nn.Module):
    """VB-LoRA on `nn.Linear` or transformers' `Conv1D` (`fan_in_fan_out=True`: weight stored as (in, out))."""

    def __init__(
        self,
        base_layer: nn.Module,
        vblora_vector_bank: nn.ParameterDict,
        adapter_name: str,
        config: VBLoRAConfig,
        r: int,
        fan_in_fan_out: bool = False,
        is_target_conv_1d_layer: bool = False,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        VBLoRALayer.__init__(self, base_layer, **kwargs)
        set_linear_sizes(self, fan_in_fan_out, is_target_conv_1d_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, vblora_vector_bank, r, config)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """`B A` in the base weight's layout (fp32 on CPU for half-precision logits)."""
        logits = self.vblora_logits_A[adapter]
        upcast = logits.device.type == "cpu" and logits.dtype in _HALF
        factor_a, factor_b = self._lora_factors(adapter, upcast)
        delta = factor_b @ factor_a
        return delta.T if self.fan_in_fan_out else delta

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        factor_a, factor_b = self._lora_factors(adapter_name)
        x = self._cast_input_dtype(x, self.vblora_vector_bank[adapter_name].dtype)
        return F.linear(F.linear(self.vblora_dropout[adapter_name](x), factor_a), factor_b)
