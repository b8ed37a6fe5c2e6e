"""DEFT layers: a rank-r sub-space of the weight is projected out and replaced by a trained injection.

    relu:  Q_P = P,               P_proj = P relu(P)^T       (P: out x r, trained)
    qr:    Q_P = qr(P).Q,         P_proj = Q_P Q_P^T
    W'     = (I - P_proj) W + Q_P (s R)                      (R: r x in, trained; s = alpha / r, or 1)
    delta  = W' - W = Q_P (s R - right^T W),   right = relu(P) (relu) or Q_P (qr)
    y      = W x + b - Q_P right^T (W x) + Q_P (s R) dropout(x)

PaRa (`para=True`) drops the injection: `delta = -Q_P right^T W`. The forward never builds an out x out or
out x in matrix: `W x` is the base output minus its bias. The adapter math runs in float32 (QR is
unreliable in half precision) and the output returns to the input's dtype, as in PEFT.

`init_weights=True` sets `s R = right^T W`, so `delta = 0` at the start. Merging caches each adapter's
`right^T W` (r x in) taken from the weight before the merge, so unmerging subtracts exactly what merging
added although the removal term depends on the weight.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._buffer_dict import BufferDict
from .._dropout import input_dropout
from .._linear_kind import set_linear_sizes
from .._quantized import weight_dtype
from .._tuner_layer import _as_list
from ..tuners_utils import BaseTunerLayer
from .config import DeftConfig


def _logical(weight: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    """A linear weight as (out, in), whatever its storage (Conv1D stores (in, out))."""
    return weight.T if fan_in_fan_out else weight


class DeftLayer(BaseTunerLayer):
    """State shared by DEFT layer kinds: P and R per adapter, their rank, projection kind and scaling."""

    adapter_layer_names = ("deft_P", "deft_R")
    other_param_names = (
        "deft_r",
        "deft_decomposition",
        "deft_init_scale",
        "deft_para",
        "deft_scaling",
        "deft_dropout",
        "_cached_merge_factor",
    )

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.deft_P = nn.ParameterDict({})
        self.deft_R = nn.ParameterDict({})
        self.deft_dropout = nn.ModuleDict({})
        self.deft_r: dict[str, int] = {}
        self.deft_decomposition: dict[str, str] = {}
        self.deft_init_scale: dict[str, float] = {}
        self.deft_para: dict[str, bool] = {}
        self.deft_scaling: dict[str, float] = {}
        # right^T W per merged adapter (r x in, fp32): recomputable, so never saved
        self._cached_merge_factor = BufferDict({}, persistent=False)
        self.kwargs = kwargs

    def update_layer(
        self, adapter_name: str, r: int, config: DeftConfig, inference_mode: bool = False, **kwargs: Any
    ) -> None:
        """Create adapter `adapter_name`: P (out x r) and, unless PaRa, R (r x in)."""
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        # P_proj has rank at most out_features (qr returns no more orthonormal columns than that)
        r = min(r, self.out_features)
        self.deft_r[adapter_name] = r
        self.deft_decomposition[adapter_name] = config.decomposition_method
        self.deft_init_scale[adapter_name] = config.init_scale
        self.deft_para[adapter_name] = config.para
        self.deft_scaling[adapter_name] = config.alpha / r if config.alpha else 1.0
        self.deft_dropout[adapter_name] = input_dropout(config.deft_dropout)
        self.deft_P[adapter_name] = nn.Parameter(torch.empty(self.out_features, r))
        if not config.para:
            self.deft_R[adapter_name] = nn.Parameter(torch.empty(r, self.in_features))
        self.reset_deft_parameters(adapter_name, init_weights=config.init_weights)
        self._finish_new_adapter(adapter_name, inference_mode)

    def reset_deft_parameters(self, adapter_name: str, init_weights: bool = True) -> None:
        """P ~ N(0, 0.02^2); R such that the adapter is a no-op (init_weights) or N(0, (0.02 init_scale)^2)."""
        if adapter_name not in self.deft_P:
            return
        nn.init.normal_(self.deft_P[adapter_name], mean=0.0, std=0.02)
        if self.deft_para[adapter_name]:
            return  # PaRa has no R: it cannot start as a no-op
        weight = self.get_base_layer().weight
        R = self.deft_R[adapter_name]
        if self.deft_P[adapter_name].is_meta or weight.is_meta or R.is_meta:
            return  # low_cpu_mem_usage: the values come from a file
        if not init_weights:
            nn.init.normal_(R, mean=0.0, std=0.02 * self.deft_init_scale[adapter_name])
            return
        _, right = self._project(self.deft_P[adapter_name].detach().to(weight.device), adapter_name)
        dense = self._dense_base_weight()  # dequantized for a quantized base
        identity_R = right.T @ _logical(dense.detach().float(), self.fan_in_fan_out)
        with torch.no_grad():
            R.copy_((identity_R / self.deft_scaling[adapter_name]).to(R.device, R.dtype))

    def _project(self, P: torch.Tensor, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q_P, right), both fp32, with `P_proj = Q_P right^T`."""
        P = P.float()
        if self.deft_decomposition[adapter_name] == "qr":
            Q_P = torch.linalg.qr(P)[0]
            return Q_P, Q_P
        return P, torch.relu(P)

    def scale_layer(self, scale: float) -> None:
        if scale != 1 and any(a in self.deft_P for a in self.active_adapters):
            warnings.warn("Scaling operation for DEFT not supported! Automatically set scale to 1.")

    def unscale_layer(self, scale: float | None = None) -> None:
        if any(a in self.deft_P for a in self.active_adapters):
            warnings.warn("Unscaling operation for DEFT not supported! Keeping scale at 1.")

    def __repr__(self) -> str:
        return "deft." + super().__repr__()


class DeftLinear(DeftLayer, nn.Module):
    """DEFT on `nn.Linear` or transformers' `Conv1D` (`fan_in_fan_out=True`: weight stored as (in, out))."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: DeftConfig,
        r: int = 0,
        is_target_conv_1d_layer: bool = False,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        DeftLayer.__init__(self, base_layer, **kwargs)
        set_linear_sizes(self, config.fan_in_fan_out, is_target_conv_1d_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, config)

    # ----- forward: y = base(x) - Q_P right^T (W x) + Q_P (s R) dropout(x) -----
    def _needs_base_result(self, adapter_name: str) -> bool:
        return True  # the removal term acts on W x, the pure base output

    def _terms(
        self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(removal, injection) outputs of one adapter, fp32; injection is None for PaRa."""
        Q_P, right = self._project(self.deft_P[adapter_name], adapter_name)
        base_product = base_result.float()
        bias = self.get_base_layer().bias
        if bias is not None:
            base_product = base_product - bias.float()
        removal = (base_product @ right) @ Q_P.T
        if self.deft_para[adapter_name]:
            return removal, None
        R = self.deft_R[adapter_name].float() * self.deft_scaling[adapter_name]
        x = self.deft_dropout[adapter_name](self._cast_input_dtype(x, torch.float32))
        return removal, F.linear(x, R) @ Q_P.T

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        removal, injection = self._terms(adapter_name, x, base_result)
        return -removal if injection is None else injection - removal

    def _apply_adapter(
        self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, base_result: torch.Tensor
    ) -> torch.Tensor:
        # PEFT's order of operations in fp32 (remove, then inject), so half-precision outputs round alike
        removal, injection = self._terms(adapter_name, x, base_result)
        result = result.float() - removal
        return result if injection is None else result + injection

    # ----- merging: delta = Q_P (s R - right^T W), with right^T W taken before the merge -----
    def _merge_factor(self, adapter_name: str) -> torch.Tensor:
        """`right^T W` (r x in, fp32): the only part of the delta that depends on the base weight."""
        weight = _logical(self._dense_base_weight().float(), self.fan_in_fan_out)
        return self._project(self.deft_P[adapter_name], adapter_name)[1].T @ weight

    def _delta_from_factor(self, adapter_name: str, factor: torch.Tensor) -> torch.Tensor:
        """The delta in the base weight's layout and dtype, from a factor `right^T W`."""
        Q_P = self._project(self.deft_P[adapter_name], adapter_name)[0]
        if self.deft_para[adapter_name]:
            delta = -(Q_P @ factor)
        else:
            delta = Q_P @ (self.deft_R[adapter_name].float() * self.deft_scaling[adapter_name] - factor)
        return _logical(delta, self.fan_in_fan_out).to(weight_dtype(self.get_base_layer()))

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """`W' - W` for the current base weight, in its layout ((in, out) for Conv1D)."""
        return self._delta_from_factor(adapter_name, self._merge_factor(adapter_name))

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Fold the adapters in; each one's removal term is taken from the weight before this merge, so
        merging several equals summing their deltas (as the forward does) and unmerging is exact."""
        names = self.active_adapters if adapter_names is None else _as_list(adapter_names)
        new = [n for n in names if n in self.deft_P and n not in self.merged_adapters]
        for name in new:
            self._cached_merge_factor[name] = self._merge_factor(name)
        try:
            super().merge(safe_merge=safe_merge, adapter_names=adapter_names)
        finally:
            for name in new:
                if name not in self.merged_adapters:
                    del self._cached_merge_factor[name]

    def _merges_additively(self, adapter_name: str) -> bool:
        return True  # a merge adds get_delta_weight (its factor kept aside so that unmerging is exact)

    def _merged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        delta = self._delta_from_factor(adapter_name, self._cached_merge_factor[adapter_name])
        return weight.float() + delta.float()

    def _unmerged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        if adapter_name in self._cached_merge_factor:
            factor = self._cached_merge_factor[adapter_name].float()
            del self._cached_merge_factor[adapter_name]
        else:  # exact only if the base weight did not change since the merge
            factor = self._merge_factor(adapter_name)
        return weight.float() - self._delta_from_factor(adapter_name, factor).float()
