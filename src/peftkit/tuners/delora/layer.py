"""DeLoRA layers: a low-rank update with normalised components and one trained strength.

    delta_W = (lambda / r) * sum_i  b_i a_i^T / (|a_i| |b_i|)  * diag(|W_:,1|, ..., |W_:,in|)
    y = W x + b + delta_W x

with a_i the rows of A (r x in), b_i the columns of B (out x r) (norms clamped at 1e-4), lambda the
trained boundary (`delora_lambda`) and |W_:,j| the norms of the base weight's input columns, taken once
when the adapter is created (`delora_w_norm`, a buffer saved with the adapter). Each normalised component
has norm 1, so |delta_W|_F <= lambda * max_j |W_:,j|: the strength lambda is decoupled from the direction.
The forward computes `((x * w_norm) A^T * scale) B^T` without forming delta_W.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._buffer_dict import BufferDict
from ..tuners_utils import BaseTunerLayer
from .config import DeloraConfig

_HALF = (torch.float16, torch.bfloat16)
_MIN_NORM = 1e-4


class DeloraLayer(BaseTunerLayer):
    """State of DeLoRA on one layer: per adapter A, B, lambda, the rank and the base weight's column norms."""

    adapter_layer_names = ("delora_A", "delora_B", "delora_lambda")
    other_param_names = ("r", "delora_dropout", "delora_w_norm")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.r: dict[str, int] = {}
        self.delora_dropout = nn.ModuleDict({})
        self.delora_A = nn.ParameterDict({})
        self.delora_B = nn.ParameterDict({})
        self.delora_lambda = nn.ParameterDict({})
        self.delora_w_norm = BufferDict(persistent=True)  # fixed at creation, saved with the adapter
        self.kwargs = kwargs

    def update_layer(
        self,
        adapter_name: str,
        r: int,
        delora_lambda: float,
        config: DeloraConfig,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create adapter `adapter_name` of rank `r` with boundary `delora_lambda`."""
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        self.r[adapter_name] = r
        self.delora_A[adapter_name] = nn.Parameter(torch.empty(r, self.in_features))
        self.delora_B[adapter_name] = nn.Parameter(torch.empty(self.out_features, r))
        self.delora_lambda[adapter_name] = nn.Parameter(torch.empty(1))
        p = config.module_dropout
        self.delora_dropout[adapter_name] = nn.Dropout(p=p) if p > 0.0 else nn.Identity()
        self.reset_delora_parameters(adapter_name, config.init_weights, delora_lambda)
        self._finish_new_adapter(adapter_name, inference_mode)

    def reset_delora_parameters(
        self, adapter_name: str, init_weights: bool = True, delora_lambda: float = 15.0
    ) -> None:
        """A kaiming-uniform, B zero (random too without `init_weights`), lambda set, and the base weight's
        column norms taken now (ones while the weight is on the meta device: a file fills them)."""
        if adapter_name not in self.delora_A:
            return
        nn.init.kaiming_uniform_(self.delora_A[adapter_name], a=math.sqrt(5))
        if init_weights is True:
            nn.init.zeros_(self.delora_B[adapter_name])
        else:
            nn.init.kaiming_uniform_(self.delora_B[adapter_name], a=math.sqrt(5))
        with torch.no_grad():
            self.delora_lambda[adapter_name].fill_(float(delora_lambda))
            weight = self.get_base_layer().weight
            if weight.is_meta:
                self.delora_w_norm[adapter_name] = torch.ones(self.in_features, device=weight.device)
            else:  # in the weight's precision (as PEFT takes it; an autocast makes it fp32 afterwards);
                # a quantized weight is dequantized first
                self.delora_w_norm[adapter_name] = torch.norm(self._dense_base_weight().detach(), dim=0)

    def cast_adapter_dtype(self, adapter_name: str, dtype: torch.dtype = torch.float32) -> None:
        """The trained tensors and the column norms go to `dtype` together (PEFT casts both)."""
        super().cast_adapter_dtype(adapter_name, dtype)
        norms = self.delora_w_norm
        if adapter_name in norms and norms[adapter_name].dtype in _HALF:
            norms[adapter_name] = norms[adapter_name].to(dtype)

    def _component_scales(self, adapter: str) -> torch.Tensor:
        """`lambda / r / (|a_i| |b_i|)` for the r components."""
        a_norms = self.delora_A[adapter].norm(dim=1).clamp(min=_MIN_NORM)
        b_norms = self.delora_B[adapter].norm(dim=0).clamp(min=_MIN_NORM)
        return self.delora_lambda[adapter] / self.r[adapter] / (a_norms * b_norms)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """delta_W (out, in) of adapter `adapter`."""
        if adapter not in self.delora_A:
            raise ValueError(f"Adapter {adapter} not found.")
        scaled_b = self.delora_B[adapter] * self._component_scales(adapter)
        return (scaled_b @ self.delora_A[adapter]) * self.delora_w_norm[adapter].unsqueeze(0)

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        a, b = self.delora_A[adapter_name], self.delora_B[adapter_name]
        x = self.delora_dropout[adapter_name](self._cast_input_dtype(x, a.dtype))
        hidden = F.linear(x * self.delora_w_norm[adapter_name], a) * self._component_scales(adapter_name)
        # rounded to the output's precision before it is added, as PEFT does
        return F.linear(hidden, b).to(base_result.dtype)

    def __repr__(self) -> str:
        return "delora." + super().__repr__()


class DeloraLinear(DeloraLayer, nn.Module):
    """DeLoRA on `nn.Linear`."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: DeloraConfig,
        r: int = 8,
        delora_lambda: float = 15.0,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        DeloraLayer.__init__(self, base_layer, **kwargs)
        base = self.get_base_layer()
        self.in_features, self.out_features = base.in_features, base.out_features
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, delora_lambda, config)
