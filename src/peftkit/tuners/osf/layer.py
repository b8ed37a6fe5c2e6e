"""OSF layers: the weight's low singular directions train, orthogonally to its frozen top ones.

    W0 = U_high S_high V_high^T + U0 S0 V0                      (SVD, top `effective_rank` directions high)
    delta_W = U_low diag(S_low) V_low - U0 diag(S0) V0           (U_low, S_low, V_low trained, from U0, S0, V0)
    y = W0 x + b + delta_W x

so the adapted weight is `U_high S_high V_high^T + U_low S_low V_low`. The gradients of U_low and V_low are
projected orthogonally to the high subspace (see `projection.py`). The initial factors (U0, S0, V0) and the
high bases needed for the projection are not saved: they are recomputed from the base weight's SVD.
On a quantized base (bitsandbytes) that is the SVD of the dequantized weight, and the factors are in the
dtype the weight dequantizes to.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._buffer_dict import BufferDict
from .._quantized import weight_shape
from ..tuners_utils import BaseTunerLayer
from .config import OSFConfig
from .projection import project_gradient
from .utils import decompose_weight_matrix

__all__ = ["Linear", "OSFLayer", "resolve_effective_rank"]


def resolve_effective_rank(value: int | float | None, min_dim: int) -> int:
    """The number of frozen directions for a layer whose smaller dimension is `min_dim`: half of it for
    None, `int(min_dim * value)` for a float in (0, 1], else `int(value)`, at most `min_dim`."""
    if value is None:
        rank = min_dim // 2
    elif isinstance(value, float) and 0 < value <= 1:
        rank = int(min_dim * value)
    else:
        rank = int(value)
    return max(min(min_dim, rank), 0)


class OSFLayer(BaseTunerLayer):
    """State of OSF layers: each adapter's trained factors and the frozen ones they started from."""

    adapter_layer_names = ("osf_svd_params",)
    other_param_names = (
        "_osf_U_low_init",
        "_osf_S_low_init",
        "_osf_V_low_init",
        "_osf_U_high",
        "_osf_V_high",
        "effective_rank",
    )

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.effective_rank: dict[str, int] = {}
        self.osf_svd_params = nn.ModuleDict({})
        self._osf_U_low_init = BufferDict(persistent=False)
        self._osf_S_low_init = BufferDict(persistent=False)
        self._osf_V_low_init = BufferDict(persistent=False)
        # a high basis is kept only where the low one cannot stand in for it (a non-square SVD factor)
        self._osf_U_high = BufferDict(persistent=False)
        self._osf_V_high = BufferDict(persistent=False)
        self.kwargs = kwargs

    def update_layer(
        self,
        adapter_name: str,
        effective_rank: int | float | None,
        config: OSFConfig,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create adapter `adapter_name` from the SVD of the base weight (`effective_rank` as in the config,
        resolved against this layer's size)."""
        rank = resolve_effective_rank(effective_rank, min(self.in_features, self.out_features))
        if rank <= 0:
            raise ValueError(
                f"`effective_rank` should be a positive integer value but the value passed is {rank} (from "
                f"{effective_rank!r} for a layer of size {self.out_features}x{self.in_features}); raise it."
            )
        self.effective_rank[adapter_name] = rank
        parts = decompose_weight_matrix(self._dense_base_weight(), rank)
        for name in ("U_low", "S_low", "V_low"):
            getattr(self, f"_osf_{name}_init")[adapter_name] = parts[name].detach().clone()
        if self.out_features > self.in_features:  # U is (out, min) with out > min: not square
            self._osf_U_high[adapter_name] = parts["U_high"]
        if self.in_features > self.out_features:
            self._osf_V_high[adapter_name] = parts["V_high"]
        trained = {name: parts[name] for name in ("U_low", "S_low", "V_low")}
        if config.init_weights is False:  # random factors (tests): the frozen initial ones stay the SVD's
            trained = {name: nn.Parameter(torch.randn_like(value)) for name, value in trained.items()}
        self.osf_svd_params[adapter_name] = nn.ParameterDict(trained)
        self._finish_new_adapter(adapter_name, inference_mode)

    def _factors(self, adapter_name: str) -> tuple[torch.Tensor, ...]:
        """(U_low, S_low, V_low, U0, S0, V0), the trained ones with their gradients projected."""
        params = self.osf_svd_params[adapter_name]
        U, S, V = params["U_low"], params["S_low"], params["V_low"]
        U0, S0, V0 = (
            getattr(self, f"_osf_{n}_init")[adapter_name].to(U.dtype) for n in ("U_low", "S_low", "V_low")
        )
        if adapter_name in self._osf_U_high:
            U = project_gradient(U, self._osf_U_high[adapter_name], keep=False, on_rows=True)
        else:
            U = project_gradient(U, self._osf_U_low_init[adapter_name], keep=True, on_rows=True)
        if adapter_name in self._osf_V_high:
            V = project_gradient(V, self._osf_V_high[adapter_name], keep=False, on_rows=False)
        else:
            V = project_gradient(V, self._osf_V_low_init[adapter_name], keep=True, on_rows=False)
        return U, S, V, U0, S0, V0

    def __repr__(self) -> str:
        return "osf." + super().__repr__()


class Linear(OSFLayer, nn.Module):
    """OSF on `nn.Linear`.

    One adapter at a time: PEFT silently applies only the first of several active OSF adapters, so asking
    for more than one (outside `adapter_names=` batches) is an error here.
    """

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: OSFConfig,
        effective_rank: int | float | None = None,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        OSFLayer.__init__(self, base_layer, **kwargs)
        self.out_features, self.in_features = weight_shape(self.get_base_layer())
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, effective_rank, config)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """`U_low diag(S_low) V_low - U0 diag(S0) V0`."""
        U, S, V, U0, S0, V0 = self._factors(adapter_name)
        return (U * S) @ V - (U0 * S0) @ V0

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        U, S, V, U0, S0, V0 = self._factors(adapter_name)
        # the change as one rank-2k product: [U S, -U0 S0] @ [V; V0], never the dense (out, in) matrix
        left = torch.cat([U * S, -(U0 * S0)], dim=1)
        right = torch.cat([V, V0], dim=0)
        return F.linear(F.linear(self._cast_input_dtype(x, left.dtype), right), left).to(base_result.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.get("adapter_names") is None and not self.disable_adapters and not self.merged:
            active = [name for name in self.active_adapters if self.has_adapter(name)]
            if len(active) > 1:
                raise ValueError(
                    f"OSF applies one adapter at a time, but {active} are active on this layer; activate one "
                    "(set_adapter), merge them, or give each sample its adapter with adapter_names=."
                )
        return super().forward(x, *args, **kwargs)
