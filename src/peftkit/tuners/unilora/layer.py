"""Uni-LoRA layers: LoRA factors whose every entry is read from one trained vector shared by all layers.

    A[i, j] = theta_d[idx_A[i, j]] * s_A[i, j]      (r x in)
    B[i, j] = theta_d[idx_B[i, j]] * s_B[i, j]      (out x r)
    y = W x + b + B (A dropout(x))
    delta_W = B A

`theta_d` (length d) is the tuner's (`UniLoraModel.unilora_theta_d`, one entry per adapter) and only it
trains. The assignment `idx` and the scales `s = 1 / sqrt(how often the entry is used model-wide)` are
fixed: the tuner sets them once all the adapter's layers exist (`set_assignment`), from `proj_seed`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._buffer_dict import BufferDict
from .._dropout import input_dropout
from .._linear_kind import set_linear_sizes
from .._quantized import weight_dtype
from ..tuners_utils import BaseTunerLayer
from .config import UniLoraConfig

_HALF = (torch.float16, torch.bfloat16)


class UniLoraLayer(BaseTunerLayer):
    """State shared by Uni-LoRA layer kinds: each adapter's rank, assignment and scales, and a reference
    to the tuner's `theta_d` vectors."""

    adapter_layer_names = ("unilora_theta_d",)
    # theta_d is the tuner's (`UniLoraModel.shared_state_names`), saved once as `base_model.unilora_theta_d`
    other_param_names = (
        "r",
        "unilora_indices_A",
        "unilora_indices_B",
        "unilora_scales_A",
        "unilora_scales_B",
        "unilora_dropout",
    )

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.r: dict[str, int] = {}
        self.unilora_dropout = nn.ModuleDict({})
        self.unilora_indices_A = BufferDict(persistent=True)
        self.unilora_indices_B = BufferDict(persistent=True)
        self.unilora_scales_A = BufferDict(persistent=True)
        self.unilora_scales_B = BufferDict(persistent=True)
        self.unilora_theta_d: nn.ParameterDict | None = None
        self.kwargs = kwargs

    # theta_d holds every adapter of the model: which adapters this layer has is what it has a rank for
    def has_adapter(self, adapter_name: str) -> bool:
        return adapter_name in self.r

    def _get_available_adapters(self) -> set[str]:
        return set(self.r)

    def _adapter_tensors(self, adapter_name: str) -> Iterator[torch.Tensor]:
        return super()._adapter_tensors(adapter_name) if adapter_name in self.r else iter(())

    def update_layer(
        self,
        adapter_name: str,
        unilora_theta_d: nn.ParameterDict,
        config: UniLoraConfig,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Add adapter `adapter_name` (its theta_d already in `unilora_theta_d`); its assignment follows
        from the tuner once every layer of the adapter exists."""
        if config.r <= 0:
            raise ValueError(f"`r` {config.r} should be a positive integer value")
        self.r[adapter_name] = config.r
        self.unilora_dropout[adapter_name] = input_dropout(config.unilora_dropout)
        self.unilora_theta_d = unilora_theta_d
        self._finish_new_adapter(adapter_name, inference_mode)

    def set_assignment(
        self,
        adapter_name: str,
        indices_A: torch.Tensor,
        indices_B: torch.Tensor,
        scales_A: torch.Tensor,
        scales_B: torch.Tensor,
        persistent: bool,
    ) -> None:
        """Store the adapter's theta_d positions and scales of A (r x in) and B (out x r); `persistent`
        (the config's `save_indices`) decides whether they are part of the state dict. The scales take
        the base weight's dtype, as in PEFT (the dtype it dequantizes to, for a quantized base: peft 0.21
        casts them to the packed integer dtype, which rounds them to zero)."""
        weight, dtype = self.get_base_layer().weight, weight_dtype(self.get_base_layer())
        for container, tensor in (
            (self.unilora_indices_A, indices_A),
            (self.unilora_indices_B, indices_B),
            (self.unilora_scales_A, scales_A.to(dtype)),
            (self.unilora_scales_B, scales_B.to(dtype)),
        ):
            container.persistent = persistent
            container[adapter_name] = tensor.to(weight.device)

    def _factors(self, adapter_name: str, fp32: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """A (r x in) and B (out x r) of the adapter, read from theta_d."""
        theta = self.unilora_theta_d[adapter_name]
        scales_A, scales_B = self.unilora_scales_A[adapter_name], self.unilora_scales_B[adapter_name]
        if fp32:
            theta, scales_A, scales_B = theta.float(), scales_A.float(), scales_B.float()
        A = theta[self.unilora_indices_A[adapter_name]] * scales_A
        B = theta[self.unilora_indices_B[adapter_name]] * scales_B
        return A, B

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        A, B = self._factors(adapter_name)
        x = self._cast_input_dtype(x, self.unilora_theta_d[adapter_name].dtype)
        return F.linear(F.linear(self.unilora_dropout[adapter_name](x), A), B)


class Linear(UniLoraLayer, nn.Module):
    """Uni-LoRA on `nn.Linear` or transformers' `Conv1D` (`fan_in_fan_out=True`: weight stored as (in, out))."""

    def __init__(
        self,
        base_layer: nn.Module,
        unilora_theta_d: nn.ParameterDict,
        adapter_name: str,
        config: UniLoraConfig,
        is_target_conv_1d_layer: bool = False,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        UniLoraLayer.__init__(self, base_layer, **kwargs)
        set_linear_sizes(self, config.fan_in_fan_out, is_target_conv_1d_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, unilora_theta_d, config)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """`B A` in the base weight's layout ((in, out) for Conv1D); computed in fp32 on the CPU for half
        precision theta_d, returned in its dtype."""
        theta = self.unilora_theta_d[adapter]
        fp32 = theta.dtype in _HALF and theta.device.type == "cpu"
        A, B = self._factors(adapter, fp32=fp32)
        delta = (B @ A).to(theta.dtype)
        return delta.T if self.fan_in_fan_out else delta
