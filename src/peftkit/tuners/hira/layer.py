"""HiRA layers: a Hadamard (elementwise) product of the frozen weight with a trained low-rank matrix.

    M = B A                         (A: (r, in), B: (out, r); for a convolution A: (r, in, *k), B: (out, r, 1...))
    delta_W = W0 * M                (elementwise; rank(delta_W) can reach min(out, in) although rank(M) <= r)
    y = base(x) + (W0 * M) x        (no bias term; the adapter's input goes through dropout)

An Embedding uses `M^T` of shape (num_embeddings, embedding_dim) and looks the ids up in `W0 * M^T`.
`get_delta_weight` returns M (as PEFT does): merging needs the weight the adapter was built on, so the
first merge keeps a copy of W0 (on the CPU), every merged adapter adds `W0 * M`, and unmerging the
last one restores the copy exactly, as PEFT does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._dropout import input_dropout
from .._quantized import quantization_backend
from ..tuners_utils import BaseTunerLayer
from .config import HiraConfig


class HiraLayer(BaseTunerLayer):
    """State shared by HiRA layer kinds: the factors A and B, ranks and dropouts per adapter."""

    adapter_layer_names = ("hira_A", "hira_B", "hira_embedding_A", "hira_embedding_B")
    other_param_names = ("r", "hira_dropout")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.r: dict[str, int] = {}
        self.hira_dropout = nn.ModuleDict({})
        self.hira_A = nn.ParameterDict({})
        self.hira_B = nn.ParameterDict({})
        self.hira_embedding_A = nn.ParameterDict({})
        self.hira_embedding_B = nn.ParameterDict({})
        self._weight_before_merge: torch.Tensor | None = None
        self.kwargs = kwargs

    def update_layer(
        self, adapter_name: str, r: int, config: HiraConfig, inference_mode: bool = False, **kwargs: Any
    ) -> None:
        """Create adapter `adapter_name`: factors of rank `r`, initialised as `config.init_weights` says."""
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        self.r[adapter_name] = r
        self.hira_dropout[adapter_name] = input_dropout(config.hira_dropout)
        self._create_factors(adapter_name, r)  # drawn N(0, 1) first, in PEFT's order: A, then B
        with torch.no_grad():
            self._init_factors(adapter_name, config.init_weights)
        self._finish_new_adapter(adapter_name, inference_mode)

    def _create_factors(self, adapter_name: str, r: int) -> None:
        raise NotImplementedError

    def _init_factors(self, adapter_name: str, init_weights: bool | str | None) -> None:
        """Linear layers: A as nn.Linear's default (or N(0, 1/r^2) for "gaussian") and B = 0; False/None
        keep both N(0, 1)."""
        if not init_weights:
            return
        if init_weights is True:
            nn.init.kaiming_uniform_(self.hira_A[adapter_name], a=math.sqrt(5))
        else:  # "gaussian", checked by the config
            nn.init.normal_(self.hira_A[adapter_name], std=1 / self.r[adapter_name])
        nn.init.zeros_(self.hira_B[adapter_name])

    # ----- merging: W0 + W0 * (M_1 + M_2 + ...), W0 restored exactly at the last unmerge -----
    def _merged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        if not self.merged_adapters:  # the first merge: `weight` is W0
            self._weight_before_merge = weight.detach().to("cpu", copy=True)
        original = self._weight_before_merge.to(weight.device).float()
        return weight.float() + original * self.get_delta_weight(adapter_name).float()

    def _unmerged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        original = self._weight_before_merge.to(weight.device)
        if not self.merged_adapters:  # the last one out: W0 exactly, not W0 after a round trip
            self._weight_before_merge = None
            return original
        return weight.float() - original.float() * self.get_delta_weight(adapter_name).float()

    def __repr__(self) -> str:
        return "hira." + super().__repr__()


class Linear(HiraLayer, nn.Module):
    """HiRA on `nn.Linear` or transformers' `Conv1D` (`fan_in_fan_out=True`: weight stored as (in, out))."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: HiraConfig,
        r: int = 0,
        fan_in_fan_out: bool = False,
        is_target_conv_1d_layer: bool = False,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        HiraLayer.__init__(self, base_layer, **kwargs)
        self.fan_in_fan_out = fan_in_fan_out
        self.is_target_conv_1d_layer = is_target_conv_1d_layer
        base = self.get_base_layer()
        if hasattr(base, "in_features"):  # nn.Linear, and quantized layers whose weight is packed
            self.in_features, self.out_features = base.in_features, base.out_features
        else:  # transformers' Conv1D: weight stored as (in, out)
            self.in_features, self.out_features = base.weight.shape
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, config)

    def _create_factors(self, adapter_name: str, r: int) -> None:
        self.hira_A[adapter_name] = nn.Parameter(torch.randn(r, self.in_features))
        self.hira_B[adapter_name] = nn.Parameter(torch.randn(self.out_features, r))

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """M = B A, in the base weight's layout ((in, out) for Conv1D)."""
        product = self.hira_B[adapter] @ self.hira_A[adapter]
        return product.T if self.fan_in_fan_out else product

    def _base_weight(self) -> torch.Tensor:
        """W0 as the forward multiplies it: the weight itself, or a quantized layer's dequantized weight."""
        base = self.get_base_layer()
        return base.weight if quantization_backend(base) is None else self._dense_base_weight()

    def _modulation(self, adapter_name: str) -> torch.Tensor:
        """M = B A (out, in) as the forward computes it (as (A^T B^T)^T: PEFT's rounding)."""
        return (self.hira_A[adapter_name].T @ self.hira_B[adapter_name].T).T

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        weight = self._base_weight()
        weight = weight.T if self.fan_in_fan_out else weight
        x = self._cast_input_dtype(x, self.hira_A[adapter_name].dtype)
        return F.linear(self.hira_dropout[adapter_name](x), weight * self._modulation(adapter_name))


class Embedding(HiraLayer, nn.Module):
    """HiRA on `nn.Embedding`: A (r, num_embeddings), B (embedding_dim, r); the ids are looked up in
    `W0 * (B A)^T` (without the base layer's padding/max-norm options, as PEFT does)."""

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: HiraConfig, r: int = 0, **kwargs: Any
    ) -> None:
        nn.Module.__init__(self)
        HiraLayer.__init__(self, base_layer, **kwargs)
        base = self.get_base_layer()
        self.in_features, self.out_features = base.num_embeddings, base.embedding_dim
        self.fan_in_fan_out = False
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, config)

    def _create_factors(self, adapter_name: str, r: int) -> None:
        self.hira_embedding_A[adapter_name] = nn.Parameter(torch.randn(r, self.in_features))
        self.hira_embedding_B[adapter_name] = nn.Parameter(torch.randn(self.out_features, r))

    def _init_factors(self, adapter_name: str, init_weights: bool | str | None) -> None:
        """A = 0 (a no-op), B ~ N(0, 1), unless init_weights is False (both N(0, 1))."""
        if init_weights is False:
            return
        nn.init.zeros_(self.hira_embedding_A[adapter_name])
        nn.init.normal_(self.hira_embedding_B[adapter_name])

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """M^T = (B A)^T, shaped like the embedding table."""
        return (self.hira_embedding_B[adapter] @ self.hira_embedding_A[adapter]).T

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        modulation = self.hira_embedding_B[adapter_name] @ self.hira_embedding_A[adapter_name]
        return F.embedding(x, self.get_base_layer().weight * modulation.T)


class _ConvNd(HiraLayer, nn.Module):
    """HiRA on a convolution: A (r, in, *kernel), B (out, r, 1, ...); M[o, i, ...] = sum_r B[o, r] A[r, i, ...]."""

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: HiraConfig, r: int = 0, **kwargs: Any
    ) -> None:
        nn.Module.__init__(self)
        HiraLayer.__init__(self, base_layer, **kwargs)
        base = self.get_base_layer()
        self.in_features, self.out_features = base.in_channels, base.out_channels
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, config)

    def update_layer(
        self, adapter_name: str, r: int, config: HiraConfig, inference_mode: bool = False, **kwargs: Any
    ) -> None:
        base = self.get_base_layer()
        if base.groups > 1:
            # W0 * M needs M shaped like W0, (out, in / groups, *kernel): the factors have no such form
            raise NotImplementedError(
                f"HiRA does not support {type(base).__name__} layers with groups > 1 (got groups={base.groups}); "
                "remove this layer from target_modules."
            )
        super().update_layer(adapter_name, r, config, inference_mode=inference_mode, **kwargs)

    def _create_factors(self, adapter_name: str, r: int) -> None:
        base = self.get_base_layer()
        ones = (1,) * (base.weight.dim() - 2)
        self.hira_A[adapter_name] = nn.Parameter(torch.randn(r, self.in_features, *base.kernel_size))
        self.hira_B[adapter_name] = nn.Parameter(torch.randn(self.out_features, r, *ones))

    def _init_factors(self, adapter_name: str, init_weights: bool | str | None) -> None:
        """A as the convolution's default and B = 0 for any truthy init_weights; else both N(0, 1)."""
        if not init_weights:
            return
        nn.init.kaiming_uniform_(self.hira_A[adapter_name], a=math.sqrt(5))
        nn.init.zeros_(self.hira_B[adapter_name])

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """M, shaped like the kernel (out, in, *kernel)."""
        factor_a, factor_b = self.hira_A[adapter], self.hira_B[adapter]
        product = factor_b.flatten(1) @ factor_a.flatten(1)
        return product.view(factor_b.shape[0], *factor_a.shape[1:])

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        base = self.get_base_layer()
        x = self.hira_dropout[adapter_name](self._cast_input_dtype(x, self.hira_A[adapter_name].dtype))
        # the base layer's own convolution (stride, padding and padding mode), without its bias
        return base._conv_forward(x, base.weight * self.get_delta_weight(adapter_name), None)


class Conv1d(_ConvNd):
    """HiRA on `nn.Conv1d`."""


class Conv2d(_ConvNd):
    """HiRA on `nn.Conv2d`."""


class Conv3d(_ConvNd):
    """HiRA on `nn.Conv3d`."""
