"""What LoHa and LoKr share (LyCORIS family): config fields, the layer, the tuner.

Both methods build a weight delta `dW` (Hadamard or Kronecker product of small factors) and compute

    y = base(x) + op(x, dW),     dW = (alpha / r) * delta(factors)

where `op` is the base layer's own operation (`F.linear`, or the base convolution with its stride, padding
and dilation). Training-time regularisers, as in LyCORIS: *module dropout* skips the whole adapter for a
forward pass with probability `module_dropout`; *rank dropout* zeroes each output row of `dW` with
probability `rank_dropout` (rescaling the kept rows by `1 / mean(kept)` when the method asks for it).
Merging adds `dW` to the base weight (the framework's additive default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PeftConfig
from ..utils.other import get_pattern_key
from ._config_checks import check_layers_pattern_has_indices, is_positive_int
from ._quantized import weight_shape
from ._scaling import ScalingHelpers
from .tuners_utils import BaseTuner, BaseTunerLayer


@dataclass
class LycorisConfig(PeftConfig):
    """Fields shared by LoHaConfig and LoKrConfig: per-module rank/alpha overrides (regex -> value)."""

    rank_pattern: dict | None = field(
        default_factory=dict, metadata={"help": "Module-name regex -> rank, overriding `r`."}
    )
    alpha_pattern: dict | None = field(
        default_factory=dict, metadata={"help": "Module-name regex -> alpha, overriding `alpha`."}
    )

    def _validate_lycoris(self, method: str) -> None:
        """Checks LoHa and LoKr share; peft accepts some of these silently and fails later."""
        if not is_positive_int(self.r):
            raise ValueError(f"{method} rank r must be a positive integer, got r={self.r!r}.")
        for name in ("rank_dropout", "module_dropout"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}.")
        check_layers_pattern_has_indices(self)
        for name, value in {**(self.rank_pattern or {}), **(self.alpha_pattern or {})}.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(
                    f"rank_pattern/alpha_pattern value for {name!r} must be positive, got {value!r}."
                )


def kaiming_init(*tensors: torch.Tensor) -> None:
    """The default init of LyCORIS factors: `kaiming_uniform_(a=sqrt(5))` (bound 1/sqrt(fan_in))."""
    for tensor in tensors:
        nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))


def rebuild_tucker(core: torch.Tensor, w_a: torch.Tensor, w_b: torch.Tensor) -> torch.Tensor:
    """The conv kernel of an "effective conv" (Tucker) factorisation, `(out, in, k1, k2)`.

    `core` is `(r, r, k1, k2)`, `w_a` is `(r, out)` and `w_b` is `(r, in)`:
    `W[p, q, k, l] = sum_ij core[i, j, k, l] * w_a[i, p] * w_b[j, q]`.
    """
    return torch.einsum("ijkl,jr,ip->prkl", core, w_b, w_a)


class LycorisLayer(ScalingHelpers, BaseTunerLayer, nn.Module):
    """A LoHa/LoKr layer on `nn.Linear`, `nn.Conv1d` or `nn.Conv2d`: `y = base(x) + op(x, dW)`.

    A method implements `create_adapter_parameters` (shapes), `reset_adapter_parameters` (init) and
    `_unscaled_delta` (the product of its factors, any shape with the base weight's number of elements).
    """

    other_param_names = ("r", "alpha", "scaling", "rank_dropout", "rank_dropout_scale", "module_dropout")

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        nn.Module.__init__(self)
        self._init_tuner_layer(base_layer)
        for name in self.adapter_layer_names:
            setattr(self, name, nn.ParameterDict({}))
        self.r: dict[str, int] = {}
        self.alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.rank_dropout: dict[str, float] = {}
        self.rank_dropout_scale: dict[str, bool] = {}
        self.module_dropout: dict[str, float] = {}
        base = self.get_base_layer()
        conv = isinstance(base, nn.Conv1d | nn.Conv2d)
        self.in_features = base.in_channels if conv else base.in_features
        self.out_features = base.out_channels if conv else base.out_features
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, **kwargs)

    # ----- the base layer's geometry -----
    @property
    def kernel_size(self) -> tuple[int, ...]:
        """The base convolution's kernel size; `()` for a linear layer."""
        return tuple(weight_shape(self.get_base_layer())[2:])

    @property
    def weight_in_features(self) -> int:
        """The input size of the base weight: `in_channels // groups` for a grouped convolution."""
        return weight_shape(self.get_base_layer())[1]

    def _uses_tucker(self, use_effective_conv2d: bool) -> bool:
        """LyCORIS's "effective conv": only for convolutions whose kernel is not 1 (x 1)."""
        return use_effective_conv2d and any(k != 1 for k in self.kernel_size)

    # ----- creation -----
    def update_layer(
        self,
        adapter_name: str,
        r: int,
        alpha: float,
        rank_dropout: float = 0.0,
        module_dropout: float = 0.0,
        init_weights: bool | str = True,
        use_effective_conv2d: bool = False,
        rank_dropout_scale: bool = False,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create (or re-create) adapter `adapter_name` on this layer."""
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        self.r[adapter_name] = r
        self.alpha[adapter_name] = alpha
        self.scaling[adapter_name] = alpha / r
        self.rank_dropout[adapter_name] = rank_dropout
        self.rank_dropout_scale[adapter_name] = rank_dropout_scale
        self.module_dropout[adapter_name] = module_dropout
        self.create_adapter_parameters(adapter_name, r, use_effective_conv2d=use_effective_conv2d, **kwargs)
        self.reset_adapter_parameters(adapter_name, init_weights)
        self._finish_new_adapter(adapter_name, inference_mode)

    def _new_parameter(self, attr: str, adapter_name: str, *shape: int) -> None:
        getattr(self, attr)[adapter_name] = nn.Parameter(torch.empty(*shape))

    def create_adapter_parameters(self, adapter_name: str, r: int, **kwargs: Any) -> None:
        raise NotImplementedError

    def reset_adapter_parameters(self, adapter_name: str, init_weights: bool | str) -> None:
        raise NotImplementedError

    # ----- the delta -----
    def _unscaled_delta(self, adapter_name: str) -> torch.Tensor:
        raise NotImplementedError

    def get_delta_weight(self, adapter_name: str, apply_rank_dropout: bool = False) -> torch.Tensor:
        """`dW = (alpha / r) * delta(factors)` in the base weight's shape; with `apply_rank_dropout`, each
        output row is kept with probability `1 - rank_dropout` (kept rows rescaled if configured)."""
        weight = self._unscaled_delta(adapter_name).reshape(weight_shape(self.get_base_layer()))
        weight = weight * self.scaling[adapter_name]
        rate = self.rank_dropout[adapter_name]
        if apply_rank_dropout and rate > 0:
            keep = (torch.rand(weight.shape[0], device=weight.device) > rate).to(weight.dtype)
            if self.rank_dropout_scale[adapter_name]:
                # peft divides by the mean and returns NaN when every row is dropped; zero rows stay zero here
                keep = keep / keep.mean().clamp_min(1.0 / keep.numel())
            weight = weight * keep.view(-1, *[1] * (weight.dim() - 1))
        return weight

    def _apply_adapter(
        self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, base_result: torch.Tensor
    ) -> torch.Tensor:
        """`result + op(x, dW)`; in training the whole adapter is skipped with probability module_dropout."""
        if self.training and torch.rand(1).item() <= self.module_dropout[adapter_name]:
            return result
        delta = self.get_delta_weight(adapter_name, apply_rank_dropout=self.training)
        x = self._cast_input_dtype(x, delta.dtype)
        base = self.get_base_layer()
        if isinstance(base, nn.Linear):
            return result + F.linear(x, delta)
        return result + base._conv_forward(x, delta, None)

    def _default_scaling(self, adapter: str) -> float:
        return self.alpha[adapter] / self.r[adapter]


def lycoris_layer_kwargs(config: LycorisConfig, key: str) -> dict[str, Any]:
    """The `update_layer` arguments LoHa and LoKr share, with `rank_pattern`/`alpha_pattern` applied to
    module `key`."""
    rank_pattern, alpha_pattern = config.rank_pattern or {}, config.alpha_pattern or {}
    return {
        "r": rank_pattern.get(get_pattern_key(rank_pattern.keys(), key), config.r),
        "alpha": alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), key), config.alpha),
        "rank_dropout": config.rank_dropout,
        "module_dropout": config.module_dropout,
        "init_weights": config.init_weights,
        "use_effective_conv2d": config.use_effective_conv2d,
    }


class LycorisTuner(BaseTuner):
    """The tuner base of a LyCORIS method (peft's name); each method declares its `layer_classes`."""
