"""SHiRA layers: a fixed sparse set of the base weight's entries trains.

    delta_W[rows_k, cols_k] = scaling * w_k    (k = 1..n, n = r * (in + out); zero elsewhere)
    y = (W + delta_W) x + b

The positions (`shira_indices`, (2, n) row/column pairs, from the config's mask function) are fixed; only
the n values `shira_weight` train (`scaling` is 1, see `set_scale`). The forward runs the base layer with
the updated weight, as a merge would (the framework's `adapts_weight_in_forward`), and the update touches
only the n entries: the n sums are formed at the promoted precision and rounded once into the weight's
dtype, which is what PEFT's dense-plus-sparse addition gives. The positions are not parameters (not in the
state dict) but adapter files hold them (`saved_other_param_names`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..tuners_utils import BaseTunerLayer
from .config import ShiraConfig


class ShiraLayer(BaseTunerLayer):
    """State of SHiRA on one layer: per adapter its trained values, their positions and scaling."""

    adapter_layer_names = ("shira_weight",)
    other_param_names = ("r", "scaling", "shira_indices")
    saved_other_param_names = ("shira_indices",)
    adapts_weight_in_forward = True

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.shira_weight = nn.ParameterDict({})
        self.shira_indices: dict[str, torch.Tensor] = {}
        self.kwargs = kwargs

    def update_layer(
        self,
        adapter_name: str,
        mask: torch.Tensor | None,
        r: int,
        config: ShiraConfig,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create adapter `adapter_name`: `r * (in + out)` values at the positions `mask` marks (None: the
        positions come later, from a file)."""
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        n_trained = r * (self.in_features + self.out_features)
        if n_trained > self.in_features * self.out_features:
            raise ValueError(
                f"The set rank {r} results in more shira params ({n_trained}) than the total number of params in the "
                f"base layer {self.in_features * self.out_features} and this is not allowed; choose a smaller r."
            )
        init = torch.zeros(n_trained) if config.init_weights else torch.randn(n_trained)
        if mask is not None:
            indices = torch.stack(torch.nonzero(mask == 1, as_tuple=True)).to(torch.int)
            if indices.shape[1] != n_trained:
                raise ValueError(
                    f"The SHiRA mask of adapter '{adapter_name}' marks {indices.shape[1]} entries of {self.base_layer}, "
                    f"but r={r} gives it {n_trained} values (r * (in + out)); the mask function must mark exactly that "
                    "many."
                )
            self.shira_indices[adapter_name] = indices.to(self.base_layer.weight.device)
        self.r[adapter_name] = r
        self.scaling[adapter_name] = 1.0
        self.shira_weight[adapter_name] = nn.Parameter(init)
        self._finish_new_adapter(adapter_name, inference_mode)

    def reset_shira_parameters(self, adapter_name: str) -> None:
        """Zero the trained values (the adapter becomes a no-op)."""
        nn.init.zeros_(self.shira_weight[adapter_name])

    def set_scale(self, adapter: str, scale: float) -> None:
        """Scale adapter `adapter`'s update by `scale` (1 in training); layers without it are left alone."""
        if adapter in self.scaling:
            self.scaling[adapter] = scale

    def _positions(self, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) of adapter `adapter`'s trained entries, as index tensors beside its values."""
        indices = self.shira_indices.get(adapter)
        if indices is None:
            raise ValueError(
                f"SHiRA adapter '{adapter}' of {self.base_layer} has no mask: its mask_type has no built-in mask "
                "function. Set `config.mask_fn` before adding the adapter, or load it from a file that holds "
                "its `shira_indices`."
            )
        indices = indices.to(self.shira_weight[adapter].device, torch.long)
        return indices[0], indices[1]

    def _scaled_values(self, adapter: str) -> torch.Tensor:
        return self.shira_weight[adapter] * self.scaling[adapter]

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """The weight change as a sparse (out, in) COO tensor (as PEFT returns it)."""
        rows, cols = self._positions(adapter)
        return torch.sparse_coo_tensor(
            torch.stack([rows, cols]), self._scaled_values(adapter), (self.out_features, self.in_features)
        )

    def _add_to_entries(self, adapter: str, weight: torch.Tensor, sign: float) -> torch.Tensor:
        """`weight` with `sign * delta` added at the adapter's entries (a new tensor in `weight`'s dtype)."""
        rows, cols = self._positions(adapter)
        updated = weight[rows, cols] + sign * self._scaled_values(adapter)
        return weight.index_put((rows, cols), updated.to(weight.dtype))

    def _weight_in_forward(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        return self._add_to_entries(adapter_name, weight, 1.0)

    def _merged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        return self._add_to_entries(adapter_name, weight.float(), 1.0)

    def _unmerged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        return self._add_to_entries(adapter_name, weight.float(), -1.0)

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        """`delta_W x` alone (the forward itself runs the updated weight, see the module docstring)."""
        rows, cols = self._positions(adapter_name)
        values = self._scaled_values(adapter_name)
        x = self._cast_input_dtype(x, values.dtype)
        contributions = x[..., cols] * values
        return contributions.new_zeros(*x.shape[:-1], self.out_features).index_add_(-1, rows, contributions)

    def __repr__(self) -> str:
        return "shira." + super().__repr__()


class Linear(ShiraLayer, nn.Module):
    """SHiRA on `nn.Linear`."""

    def __init__(
        self,
        base_layer: nn.Module,
        mask: torch.Tensor | None,
        adapter_name: str,
        config: ShiraConfig,
        r: int = 0,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        if isinstance(base_layer, BaseTunerLayer):
            raise ValueError(
                f"SHiRA does not support nested base layers: {base_layer} already holds another method's adapter. "
                "Add the SHiRA adapter first (it must act on the plain weight), then the others."
            )
        ShiraLayer.__init__(self, base_layer, **kwargs)
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.fan_in_fan_out = config.fan_in_fan_out
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, mask, r, config)
