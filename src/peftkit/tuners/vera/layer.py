"""VeRA layers: frozen random projections shared by all layers, scaled by two trained vectors.

    y = W x + lambda_b * (B_s (lambda_d * (A_s dropout(x))))
    delta_W = diag(lambda_b) B_s diag(lambda_d) A_s

A (r x in_max) and B (out_max x r) live once per adapter on the tuner (`VeraModel.vera_A/vera_B`, a
BufferDict every layer shares); a layer uses their top-left slices `A_s = A[:r, :in]`, `B_s = B[:out, :r]`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._buffer_dict import BufferDict
from .._dropout import input_dropout
from .._linear_kind import set_linear_sizes
from ..tuners_utils import BaseTunerLayer
from .config import VeraConfig


class VeraLayer(BaseTunerLayer):
    """State shared by VeRA layer kinds: the trained vectors and references to the shared projections."""

    adapter_layer_names = ("vera_lambda_b", "vera_lambda_d")
    other_param_names = ("vera_A", "vera_B", "vera_dropout", "r")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.r: dict[str, int] = {}
        self.vera_dropout = nn.ModuleDict({})
        self.vera_lambda_b = nn.ParameterDict({})
        self.vera_lambda_d = nn.ParameterDict({})
        self.vera_A: BufferDict | None = None
        self.vera_B: BufferDict | None = None
        self.kwargs = kwargs

    def update_layer(
        self,
        adapter_name: str,
        vera_A: BufferDict,
        vera_B: BufferDict,
        r: int,
        config: VeraConfig,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create adapter `adapter_name` on this layer, reading its projections from the shared dicts."""
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        self.vera_A, self.vera_B = vera_A, vera_B
        rows, cols = vera_A[adapter_name].shape
        if rows < r or cols < self.in_features or vera_B[adapter_name].shape[0] < self.out_features:
            raise ValueError(
                f"The shared VeRA projections of adapter '{adapter_name}' are too small for this layer: vera_A is "
                f"{tuple(vera_A[adapter_name].shape)}, vera_B {tuple(vera_B[adapter_name].shape)}, the layer needs "
                f"at least ({r}, {self.in_features}) and ({self.out_features}, {r})."
            )
        self.r[adapter_name] = r
        dropout = config.vera_dropout
        self.vera_dropout[adapter_name] = input_dropout(dropout)
        self.vera_lambda_b[adapter_name] = nn.Parameter(torch.empty(self.out_features))
        self.vera_lambda_d[adapter_name] = nn.Parameter(torch.empty(r))
        self.reset_vera_parameters(adapter_name, d_initial=config.d_initial, init_weights=config.init_weights)
        self._finish_new_adapter(adapter_name, inference_mode)

    def reset_vera_parameters(
        self, adapter_name: str, d_initial: float = 0.1, init_weights: bool = True
    ) -> None:
        """`lambda_b = 0, lambda_d = d_initial` (the adapter starts as a no-op); with `init_weights=False`
        `lambda_b = 1` and `lambda_d ~ N(0, 1)`."""
        if adapter_name not in self.vera_lambda_d:
            return
        with torch.no_grad():
            if init_weights:
                self.vera_lambda_b[adapter_name].zero_()
                self.vera_lambda_d[adapter_name].fill_(d_initial)
            else:
                self.vera_lambda_b[adapter_name].fill_(1.0)
                nn.init.normal_(self.vera_lambda_d[adapter_name])

    def _projections(self, adapter_name: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's slices `A_s` (r x in) and `B_s` (out x r) of the shared projections."""
        r = self.r[adapter_name]
        sliced_A = self.vera_A[adapter_name][:r, : self.in_features]
        sliced_B = self.vera_B[adapter_name][: self.out_features, :r]
        return sliced_A.to(dtype), sliced_B.to(dtype)

    def __repr__(self) -> str:
        return "vera." + super().__repr__()


class Linear(VeraLayer, nn.Module):
    """VeRA on `nn.Linear` or transformers' `Conv1D` (`fan_in_fan_out=True`: weight stored as (in, out))."""

    def __init__(
        self,
        base_layer: nn.Module,
        vera_A: BufferDict,
        vera_B: BufferDict,
        adapter_name: str,
        config: VeraConfig,
        r: int = 0,
        is_target_conv_1d_layer: bool = False,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        VeraLayer.__init__(self, base_layer, **kwargs)
        set_linear_sizes(self, config.fan_in_fan_out, is_target_conv_1d_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, vera_A, vera_B, r, config)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """`diag(lambda_b) B_s diag(lambda_d) A_s`, transposed to (in, out) for Conv1D (fp32 on CPU when the
        vectors are half precision)."""
        lambda_b, lambda_d = self.vera_lambda_b[adapter], self.vera_lambda_d[adapter]
        if lambda_b.dtype in (torch.float16, torch.bfloat16) and lambda_b.device.type == "cpu":
            lambda_b, lambda_d = lambda_b.float(), lambda_d.float()
        sliced_A, sliced_B = self._projections(adapter, lambda_b.dtype)
        delta = (lambda_b.unsqueeze(-1) * sliced_B) @ (lambda_d.unsqueeze(-1) * sliced_A)
        return delta.T if self.fan_in_fan_out else delta

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        lambda_b, lambda_d = self.vera_lambda_b[adapter_name], self.vera_lambda_d[adapter_name]
        sliced_A, sliced_B = self._projections(adapter_name, lambda_d.dtype)
        x = self._cast_input_dtype(x, lambda_d.dtype)
        hidden = F.linear(self.vera_dropout[adapter_name](x), sliced_A)
        return lambda_b * F.linear(lambda_d * hidden, sliced_B)
