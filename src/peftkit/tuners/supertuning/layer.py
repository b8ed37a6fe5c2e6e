"""Super-Tuning layers: a sparse set of the weight's own entries trains, optionally beside a LoRA branch.

    S      = zeros(out, in);  S.flat[idx] += values        (idx: the k entries of largest |W|, or smallest)
    y      = (W + S) x + b  [+ (alpha / r) B A dropout(x)]  (Supra mode, with `r`)
    delta  = S [+ (alpha / r) B A]

`k = int(out * in * (1 - sparsity))`. The positions are chosen once, when the adapter is created, from the
base weight (`torch.topk` of |W|), and kept as int32 `supertuning_indices` (saved, unless
`save_precomputed_indices=False`: then recomputed on load, which needs the same base weights). The
forward runs the layer with the weight `W + S`, which costs a copy of the weight and no second matmul.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .._buffer_dict import BufferDict
from .._dropout import input_dropout
from ..tuners_utils import BaseTunerLayer
from .config import SupertuningConfig


def sparse_support(weight: torch.Tensor, sparsity: float, select_top: bool) -> torch.Tensor:
    """Flat positions (int32) of the `int(numel * (1 - sparsity))` entries of largest (or smallest) |W|."""
    scores = weight.abs().flatten()
    count = int(scores.numel() * (1 - sparsity))
    if count < 1:
        raise ValueError(
            f"sparsity={sparsity} leaves no trainable entries for a weight with {scores.numel()} "
            "elements — no parameter would be adapted. Lower the sparsity so at least one entry is trainable."
        )
    # int32 halves the saved size; positions stay below numel, far inside int32 for real weights
    return torch.topk(scores, k=count, largest=select_top).indices.to(torch.int32)


class SupertuningLayer(BaseTunerLayer):
    """State shared by Super-Tuning layers: sparse positions and values, and the optional LoRA branch."""

    adapter_layer_names = ("supertuning_values", "supertuning_lora_A", "supertuning_lora_B")
    other_param_names = (
        "supertuning_indices",
        "supertuning_rank",
        "supertuning_lora_alpha",
        "supertuning_lora_dropout",
    )
    adapts_weight_in_forward = True

    def __init__(self, base_layer: nn.Module, save_precomputed_indices: bool = True, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.supertuning_values = nn.ParameterDict({})
        # saved or not for every adapter alike (the tuner refuses mixed settings)
        self.supertuning_indices = BufferDict(persistent=save_precomputed_indices)
        self.supertuning_lora_A = nn.ModuleDict({})
        self.supertuning_lora_B = nn.ModuleDict({})
        self.supertuning_lora_dropout = nn.ModuleDict({})
        self.supertuning_rank: dict[str, int] = {}  # 0: no LoRA branch for that adapter
        self.supertuning_lora_alpha: dict[str, float] = {}
        base = self.get_base_layer()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.kwargs = kwargs

    def update_layer(
        self, adapter_name: str, config: SupertuningConfig, inference_mode: bool = False, **kwargs: Any
    ) -> None:
        """Create adapter `adapter_name`: choose its positions, then its values and LoRA branch."""
        weight = self.get_base_layer().weight
        # positions by the magnitudes of the weight as numbers (a quantized weight is dequantized)
        indices = sparse_support(self._dense_base_weight(), config.sparsity, config.select_top)
        self.supertuning_indices[adapter_name] = indices.to(weight.device)
        count = indices.numel()
        if config.init_weights:
            values = torch.zeros(count, dtype=torch.float32, device=weight.device)
        else:
            values = torch.randn(count, dtype=torch.float32, device=weight.device)
        self.supertuning_values[adapter_name] = nn.Parameter(values)
        self.supertuning_rank[adapter_name] = config.r or 0
        self.supertuning_lora_alpha[adapter_name] = float(config.lora_alpha) if config.r else 0.0
        if config.r:
            self._create_lora_branch(adapter_name, config, weight.device)
        self._finish_new_adapter(adapter_name, inference_mode)

    def _create_lora_branch(self, adapter_name: str, config: SupertuningConfig, device: torch.device) -> None:
        """A (r x in): Kaiming-uniform; B (out x r): zeros, or Kaiming-uniform with init_weights=False."""
        r = config.r
        lora_A = nn.Linear(self.in_features, r, bias=False, dtype=torch.float32, device=device)
        lora_B = nn.Linear(r, self.out_features, bias=False, dtype=torch.float32, device=device)
        nn.init.kaiming_uniform_(lora_A.weight, a=math.sqrt(5))
        if config.init_weights:
            nn.init.zeros_(lora_B.weight)
        else:
            nn.init.kaiming_uniform_(lora_B.weight, a=math.sqrt(5))
        self.supertuning_lora_A[adapter_name] = lora_A
        self.supertuning_lora_B[adapter_name] = lora_B
        self.supertuning_lora_dropout[adapter_name] = input_dropout(config.lora_dropout)


class Linear(SupertuningLayer, nn.Module):
    """Super-Tuning on `nn.Linear`."""

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: SupertuningConfig, **kwargs: Any
    ) -> None:
        nn.Module.__init__(self)
        SupertuningLayer.__init__(self, base_layer, save_precomputed_indices=config.save_precomputed_indices)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def _scatter(self, adapter_name: str, weight: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
        """`weight` with the adapter's sparse values added (sign=-1: taken away), in `weight`'s dtype."""
        indices = self.supertuning_indices[adapter_name].long()
        values = self.supertuning_values[adapter_name].to(weight.dtype)
        return weight.reshape(-1).scatter_add(0, indices, values if sign > 0 else -values).reshape_as(weight)

    def _lora_delta(self, adapter_name: str, dtype: torch.dtype) -> torch.Tensor:
        """`(alpha / r) B A` as an (out, in) matrix."""
        scale = self.supertuning_lora_alpha[adapter_name] / self.supertuning_rank[adapter_name]
        A = self.supertuning_lora_A[adapter_name].weight
        B = self.supertuning_lora_B[adapter_name].weight
        return (scale * (B @ A)).to(dtype)

    # ----- forward: the layer runs with W + S; the LoRA branch is added beside it -----
    def _weight_in_forward(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        return self._scatter(adapter_name, weight)

    def _output_beside_weight(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        rank = self.supertuning_rank[adapter_name]
        if not rank:
            return result
        lora_A = self.supertuning_lora_A[adapter_name]
        x = self.supertuning_lora_dropout[adapter_name](x).to(lora_A.weight.dtype)
        branch = self.supertuning_lora_B[adapter_name](lora_A(x))
        return result + (self.supertuning_lora_alpha[adapter_name] / rank * branch).to(result.dtype)

    # ----- merging (in the weight's dtype, sparse part first, as PEFT) -----
    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """`S (+ (alpha / r) B A)` as an (out, in) matrix in the base weight's dtype."""
        weight = self._dense_base_weight()
        delta = self._scatter(adapter_name, torch.zeros_like(weight))
        if self.supertuning_rank[adapter_name]:
            delta = delta + self._lora_delta(adapter_name, weight.dtype)
        return delta

    def _merged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        merged = self._scatter(adapter_name, weight)
        if self.supertuning_rank[adapter_name]:
            merged = merged + self._lora_delta(adapter_name, weight.dtype)
        return merged

    def _unmerged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        if self.supertuning_rank[adapter_name]:
            weight = weight - self._lora_delta(adapter_name, weight.dtype)
        return self._scatter(adapter_name, weight, sign=-1.0)
