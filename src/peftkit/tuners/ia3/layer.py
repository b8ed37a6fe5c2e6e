"""IA3 layers: a learned vector `l` rescales a layer's output, or (feed-forward layers) its input.

    y = l * (W x + b)        (attention-style targets: one scale per output channel)
    y = W (l * x) + b        (feed-forward targets: one scale per input channel)

Both are a rescaling of W's rows or columns, so merging multiplies the weight (and, for output scaling,
the bias) by `l`; several active adapters multiply their vectors. The framework runs the loop over
active adapters, mixed batches and merge bookkeeping; this file says only how `l` is shaped and applied.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._quantized import weight_shape
from ..tuners_utils import BaseTunerLayer
from .config import IA3Config

# Unmerging divides by `l`; an exactly-zero scale cannot be undone, the epsilon keeps the weight finite
# (it becomes zero), as PEFT does.
_UNMERGE_EPS = 1e-8


class IA3Layer(BaseTunerLayer):
    """State shared by every IA3 layer kind: the per-adapter scaling vectors `ia3_l`."""

    adapter_layer_names = ("ia3_l",)

    def __init__(self, base_layer: nn.Module, is_feedforward: bool, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.ia3_l = nn.ParameterDict({})
        self.is_feedforward = is_feedforward
        self.transforms_input = is_feedforward  # feed-forward layers scale what the base layer sees
        self.fan_in_fan_out = False
        self.kwargs = kwargs

    def update_layer(
        self, adapter_name: str, config: IA3Config, inference_mode: bool = False, **kwargs: Any
    ) -> None:
        """Create (or re-create) adapter `adapter_name`: `l` = ones (or random normal with
        `init_ia3_weights=False`); its shape broadcasts over the scaled channel."""
        self.ia3_l[adapter_name] = nn.Parameter(torch.empty(self._vector_shape()))
        self.reset_ia3_parameters(adapter_name, config.init_ia3_weights)
        self._finish_new_adapter(adapter_name, inference_mode)

    def reset_ia3_parameters(self, adapter_name: str, init_ia3_weights: bool = True) -> None:
        if adapter_name not in self.ia3_l:
            return
        if init_ia3_weights:
            nn.init.ones_(self.ia3_l[adapter_name])
        else:
            nn.init.normal_(self.ia3_l[adapter_name])

    # ----- what a layer kind says -----
    def _vector_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def _activation_scale(self, adapter_name: str) -> torch.Tensor:
        """`l`, shaped to broadcast over this layer's input (feed-forward) or output activations."""
        raise NotImplementedError

    def _weight_axes(self) -> tuple[int, int]:
        """(output axis, input axis) of the base weight."""
        return 0, 1

    # ----- forward -----
    def _transform_input(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        scale = self._activation_scale(adapter_name)
        return (x * scale).to(x.dtype)

    def _apply_adapter(
        self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, base_result: torch.Tensor
    ) -> torch.Tensor:
        if self.is_feedforward:  # the input was already scaled
            return result
        return result * self._activation_scale(adapter_name)

    # ----- merging: W -> W * l along the scaled axis -----
    def _weight_factor(self, adapter_name: str) -> torch.Tensor:
        dims = len(weight_shape(self.get_base_layer()))
        out_axis, in_axis = self._weight_axes()
        shape = [1] * dims
        shape[in_axis if self.is_feedforward else out_axis] = -1
        return self.ia3_l[adapter_name].detach().float().reshape(shape)

    def _merged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        return weight.float() * self._weight_factor(adapter_name)

    def _unmerged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        return weight.float() / (self._weight_factor(adapter_name) + _UNMERGE_EPS)

    def _merged_bias(self, adapter_name: str) -> torch.Tensor | None:
        bias = self.get_base_layer().bias
        if bias is None or self.is_feedforward:  # scaling the input leaves the bias alone
            return None
        return bias.data.float() * self.ia3_l[adapter_name].detach().float().flatten()

    def _unmerged_bias(self, adapter_name: str) -> torch.Tensor | None:
        bias = self.get_base_layer().bias
        if bias is None or self.is_feedforward:
            return None
        return bias.data.float() / (self.ia3_l[adapter_name].detach().float().flatten() + _UNMERGE_EPS)

    def __repr__(self) -> str:
        return "ia3." + super().__repr__()


class Linear(IA3Layer, nn.Module):
    """IA3 on `nn.Linear` or transformers' `Conv1D` (`fan_in_fan_out`: weight stored as (in, out))."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: IA3Config,
        is_feedforward: bool = False,
        is_target_conv_1d_layer: bool = False,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        IA3Layer.__init__(self, base_layer, is_feedforward=is_feedforward, **kwargs)
        self.fan_in_fan_out = config.fan_in_fan_out
        self.is_target_conv_1d_layer = is_target_conv_1d_layer
        shape = weight_shape(base_layer)  # as numbers: a 4-bit weight is stored packed
        out_axis, in_axis = self._weight_axes()
        self.in_features, self.out_features = shape[in_axis], shape[out_axis]
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def _weight_axes(self) -> tuple[int, int]:
        return (1, 0) if self.fan_in_fan_out else (0, 1)

    def _vector_shape(self) -> tuple[int, ...]:
        return (1, self.in_features) if self.is_feedforward else (self.out_features, 1)

    def _activation_scale(self, adapter_name: str) -> torch.Tensor:
        return self.ia3_l[adapter_name].flatten()


class _ConvNd(IA3Layer, nn.Module):
    """IA3 on a convolution: one scale per input (feed-forward) or output channel."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: IA3Config,
        is_feedforward: bool = False,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        IA3Layer.__init__(self, base_layer, is_feedforward=is_feedforward, **kwargs)
        self.in_features, self.out_features = base_layer.in_channels, base_layer.out_channels
        self._kernel_dim = base_layer.weight.dim()
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def _vector_shape(self) -> tuple[int, ...]:
        channels = self.in_features if self.is_feedforward else self.out_features
        return (1, channels) + (1,) * (self._kernel_dim - 2)

    def _activation_scale(self, adapter_name: str) -> torch.Tensor:
        return self.ia3_l[adapter_name]


class Conv2d(_ConvNd):
    """IA3 on `nn.Conv2d`."""


class Conv3d(_ConvNd):
    """IA3 on `nn.Conv3d`."""
