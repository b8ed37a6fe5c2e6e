"""FRoD layers: the adapted weight is rebuilt from factors, of which only a diagonal and a sparse part train.

    W = U diag(lambda_0) V^T                    (exact at creation: V shared by the layers of one role,
                                                 U and lambda_0 from this layer's weight, see projections.py)
    W' = U (diag(lambda) + S) V^T               (trained: lambda, from lambda_0, and S's few entries)
    y = W' x + b = F.linear((x V) S^T + (x V) * lambda, U) + b

With one active adapter and no dropout in play the base layer is not run at all (`_output_without_base`);
otherwise the adapter adds `W' x - W x` to the base output (with dropout: `W' d(x) - W d(x)`). Merging
writes W' into the base weight; unmerging the last merged adapter restores the weight saved before the
first merge exactly. U is recomputed when V is loaded from a file, so that U, V and lambda always
belong together.

`runtime_offload_base_weight` keeps the base weight on the CPU while only the factors are used and brings
it back to the input's device whenever the base layer runs (merged, disabled, dropout, several adapters).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._buffer_dict import BufferDict
from .._dropout import input_dropout
from ..tuners_utils import BaseTunerLayer
from .config import FrodConfig
from .projections import decompose

_SHARED = ("frod_V", "frod_s_indices", "frod_s_size")


def _version_of(tensor: torch.Tensor) -> tuple[int, int]:
    """Changes when the tensor is replaced or written to in place (e.g. loaded from a file)."""
    return tensor.data_ptr(), tensor._version


class FrodLayer(BaseTunerLayer):
    """State of a FRoD layer: the trained lambda and S values, U, and references to its role's shared V and
    S positions (held by the tuner, one BufferDict per role, not registered here so they are saved once)."""

    adapter_layer_names = ("frod_lambda_l", "frod_lambda_s_values")
    other_param_names = (
        "r",
        "frod_V",
        "frod_U",
        "frod_s_indices",
        "frod_s_size",
        "runtime_offload_base_weight",
        "frod_dropout",
    )

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.r: dict[str, int] = {}
        self.runtime_offload_base_weight: dict[str, bool] = {}
        self.frod_dropout = nn.ModuleDict({})
        self.frod_lambda_l = nn.ParameterDict({})
        self.frod_lambda_s_values = nn.ParameterDict({})
        self.frod_U = BufferDict(persistent=False)  # rebuilt from V and the base weight, never saved
        for name in _SHARED:
            object.__setattr__(self, name, None)
        self._u_built_from: dict[str, tuple[int, int]] = {}
        self._weight_before_merge: torch.Tensor | None = None
        self.kwargs = kwargs

    def update_layer(
        self,
        adapter_name: str,
        frod_V: BufferDict | None,
        frod_s_indices: BufferDict | None,
        frod_s_size: BufferDict | None,
        config: FrodConfig,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create adapter `adapter_name` from its role's shared V and S positions: lambda and U from the base
        weight, S = 0 (or random with `init_weights=False`, drawn as peft draws it)."""
        if frod_V is None or adapter_name not in frod_V:
            raise ValueError(
                f"FRoD's shared basis for adapter '{adapter_name}' is missing for this layer; the layers of an "
                "adapter are created by FrodModel, which computes the bases first."
            )
        for name, shared in zip(_SHARED, (frod_V, frod_s_indices, frod_s_size)):
            object.__setattr__(self, name, shared)  # a reference, not a submodule (saved once, by the tuner)
        dtype = self._dense_weight().dtype
        self.r[adapter_name] = self.out_features
        self.runtime_offload_base_weight[adapter_name] = config.runtime_offload_base_weight
        self.frod_dropout[adapter_name] = input_dropout(config.frod_dropout)
        entries = frod_s_indices[adapter_name].shape[1]
        self.frod_lambda_s_values[adapter_name] = nn.Parameter(torch.zeros(entries, dtype=dtype))
        unit, norms = decompose(self._dense_weight(), frod_V[adapter_name].to(dtype))
        self.frod_lambda_l[adapter_name] = nn.Parameter(norms.to(dtype))
        if not config.init_weights:
            with torch.no_grad():
                nn.init.normal_(self.frod_lambda_s_values[adapter_name], std=0.1)
                lambda_l = self.frod_lambda_l[adapter_name]
                lambda_l.add_(torch.randn_like(lambda_l) * 0.1)
        self.frod_U[adapter_name] = unit.to(self.get_base_layer().weight.device, dtype)
        self._u_built_from[adapter_name] = _version_of(frod_V[adapter_name])
        self._finish_new_adapter(adapter_name, inference_mode)

    def reset_frod_parameters(self, adapter_name: str) -> None:
        """S = 0: the adapted weight is `U diag(lambda) V^T` again."""
        if adapter_name in self.frod_lambda_s_values:
            with torch.no_grad():
                nn.init.zeros_(self.frod_lambda_s_values[adapter_name])

    def refresh_u(self) -> None:
        """Recompute U for every adapter whose V changed since U was built (a V loaded from a file)."""
        for adapter_name, built_from in self._u_built_from.items():
            basis = self.frod_V[adapter_name]
            if basis.is_meta or _version_of(basis) == built_from:
                continue
            unit, _ = decompose(self._reference_weight(), basis.to(self.frod_U[adapter_name].dtype))
            self.frod_U[adapter_name] = unit.to(
                self.frod_U[adapter_name].device, self.frod_U[adapter_name].dtype
            )
            self._u_built_from[adapter_name] = _version_of(basis)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._u_built_from.pop(adapter_name, None)

    # ----- the base weight -----
    def _dense_weight(self) -> torch.Tensor:
        """The base weight as (out, in), whatever the layer stores."""
        weight = self.get_base_layer().weight
        return weight.T if self.fan_in_fan_out else weight

    def _reference_weight(self) -> torch.Tensor:
        """(out, in) base weight without any adapter merged: the one saved at the first merge, if any."""
        weight = self._weight_before_merge
        if weight is None:
            return self._dense_weight().detach()
        return weight.T if self.fan_in_fan_out else weight

    def _adapter_device(self) -> torch.device | None:
        tensor = next((p for p in self.frod_lambda_l.values() if not p.is_meta), None)
        return None if tensor is None else tensor.device

    def _place_base_weight(self, device: torch.device | None) -> None:
        """Move the base weight (and its gradient) to `device` (runtime offloading)."""
        weight = self.get_base_layer().weight
        if device is None or weight.is_meta or weight.device == device:
            return
        weight.data = weight.data.to(device)
        if weight.grad is not None:
            weight.grad = weight.grad.to(device)

    def _offloads(self) -> bool:
        return any(self.runtime_offload_base_weight.values())

    def _bring_back_base_weight(self) -> None:
        """An offloaded base weight returns beside the adapter (to merge into it, or to stay after unloading)."""
        if self._offloads():
            self._place_base_weight(self._adapter_device())

    def __repr__(self) -> str:
        return "frod." + super().__repr__()


class Linear(FrodLayer, nn.Module):
    """FRoD on `nn.Linear` or transformers' `Conv1D` (`fan_in_fan_out=True`: weight stored as (in, out))."""

    def __init__(
        self,
        base_layer: nn.Module,
        frod_V: BufferDict | None,
        frod_s_indices: BufferDict | None,
        frod_s_size: BufferDict | None,
        adapter_name: str,
        config: FrodConfig,
        is_target_conv_1d_layer: bool = False,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        FrodLayer.__init__(self, base_layer, **kwargs)
        self.fan_in_fan_out = config.fan_in_fan_out
        self.is_target_conv_1d_layer = is_target_conv_1d_layer
        self.out_features, self.in_features = self._dense_weight().shape
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, frod_V, frod_s_indices, frod_s_size, config)

    # ----- the factors -----
    def _factors(
        self, adapter: str, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """U, V, S (sparse, coalesced) and lambda of `adapter`, on `device` in `dtype`."""
        unit = self.frod_U[adapter].to(device=device, dtype=dtype)
        basis = self.frod_V[adapter].to(device=device, dtype=dtype)
        indices = self.frod_s_indices[adapter].to(device=device, dtype=torch.long)
        values = self.frod_lambda_s_values[adapter].to(device=device, dtype=dtype)
        sparse = torch.sparse_coo_tensor(indices, values, (basis.shape[0], basis.shape[0])).coalesce()
        return unit, basis, sparse, self.frod_lambda_l[adapter].to(device=device, dtype=dtype)

    def adapted_weight(self, adapter: str) -> torch.Tensor:
        """`U (S + diag(lambda)) V^T` (out, in), in the base weight's dtype and on its device."""
        weight = self.get_base_layer().weight
        unit, basis, sparse, lambda_l = self._factors(adapter, weight.device, weight.dtype)
        return unit @ (sparse.to_dense() + torch.diag_embed(lambda_l)) @ basis.T

    def _frod_output(self, adapter: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(`W' d(x)` without the bias, `d(x)`), computed from the factors in x's dtype."""
        unit, basis, sparse, lambda_l = self._factors(adapter, x.device, x.dtype)
        dropped = self.frod_dropout[adapter](x)
        flat = dropped.reshape(-1, dropped.shape[-1])
        coordinates = torch.matmul(flat, basis)
        if sparse._nnz() == 0:
            through_s = torch.zeros_like(coordinates)
        elif coordinates.dtype in (
            torch.float16,
            torch.bfloat16,
        ):  # no half-precision sparse matmul everywhere
            through_s = coordinates @ sparse.to_dense().t()
        else:
            through_s = torch.sparse.mm(sparse, coordinates.t()).t()
        output = F.linear(through_s + coordinates * lambda_l, unit)
        return output.reshape(*dropped.shape[:-1], output.shape[-1]), dropped

    def _dropout_is_random(self, adapter: str) -> bool:
        dropout = self.frod_dropout[adapter]
        return not isinstance(dropout, nn.Identity) and dropout.training

    def _apply(self, fn: Any, recurse: bool = True) -> nn.Module:
        result = super()._apply(fn, recurse)
        if self._offloads():  # `.to(device)` moved the base weight too: back to the CPU until it is needed
            self._place_base_weight(torch.device("cpu"))
        return result

    # ----- forward -----
    def _alone(self, active: list[str]) -> str | None:
        """The adapter whose factors alone give the output (one active, no random dropout), or None."""
        if len(active) == 1 and not self._dropout_is_random(active[0]):
            return active[0]
        return None

    def base_layer_runs(self, adapter_names: list[str] | None = None) -> bool:
        """Whether the next forward (with these `adapter_names`) runs the base layer, or only the factors."""
        if self.disable_adapters or self.merged or adapter_names is not None:
            return True
        return self._alone([name for name in self.active_adapters if self.has_adapter(name)]) is None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self._offloads():  # the base weight must be where the base layer runs, if it runs
            runs = self.base_layer_runs(kwargs.get("adapter_names"))
            self._place_base_weight(x.device if runs else torch.device("cpu"))
        return super().forward(x, *args, **kwargs)

    def _output_without_base(self, active: list[str], x: torch.Tensor) -> torch.Tensor | None:
        adapter = self._alone(active)
        if adapter is None:
            return None
        output, _ = self._frod_output(adapter, x)
        bias = self.get_base_layer().bias
        return (output if bias is None else output + bias).to(x.dtype)

    def _needs_base_result(self, adapter_name: str) -> bool:
        return not self._dropout_is_random(adapter_name)

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        output, dropped = self._frod_output(adapter_name, x)
        base = self.get_base_layer()
        if self._dropout_is_random(adapter_name):  # the base weight's share of the dropped input
            weight = self._dense_weight().to(device=x.device, dtype=x.dtype)
            return output - F.linear(dropped, weight)
        return output - (base_result if base.bias is None else base_result - base.bias)

    # ----- merging -----
    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """`W' - W` in the base weight's layout, W being the weight before any merge."""
        self._bring_back_base_weight()
        reference = self._reference_weight().to(self.get_base_layer().weight.dtype)
        delta = self.adapted_weight(adapter) - reference
        return delta.T if self.fan_in_fan_out else delta

    def _dense_base_weight(self) -> torch.Tensor:
        self._bring_back_base_weight()
        return super()._dense_base_weight()

    def _merged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        if not self.merged_adapters:  # the first merge: keep the weight to restore it exactly
            self._weight_before_merge = weight.detach().clone()
        return super()._merged_weight(adapter_name, weight)

    def _unmerged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        if self.merged_adapters or self._weight_before_merge is None:
            return super()._unmerged_weight(adapter_name, weight)
        original, self._weight_before_merge = self._weight_before_merge, None
        return original  # the last merged adapter leaves: the weight exactly as before the first merge
