"""RoAd layers: the base layer's output, rotated pairwise by trained angles and scaled (see `rotation`).

    y = R (W x + b)        R block-sparse: per pair (k, k + g/2) of a group of g outputs,
                           [[c_k, -s_k], [s_{k+g/2}, c_{k+g/2}]],  c = alpha cos(theta), s = alpha sin(theta)

Merging folds R into the layer: W <- R W, b <- R b; unmerging applies R^-1 (R is not orthogonal once the
scales move away from 1, so the inverse is computed, in fp32). Several active adapters rotate in turn.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..tuners_utils import BaseTunerLayer
from .config import RoadConfig
from .rotation import rotate, rotation_matrix

_PARAMETERS_PER_OUTPUT = {"road_1": 0.5, "road_2": 1, "road_4": 2}


class RoadLayer(BaseTunerLayer):
    """State shared by RoAd layer kinds: per adapter the angles, the scales, the variant and group size."""

    adapter_layer_names = ("road_theta", "road_alpha")
    other_param_names = ("variant", "group_size")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.variant: dict[str, str] = {}
        self.group_size: dict[str, int] = {}
        self.road_theta = nn.ParameterDict({})
        self.road_alpha = nn.ParameterDict({})
        base = self.get_base_layer()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.kwargs = kwargs

    def update_layer(
        self, adapter_name: str, config: RoadConfig, inference_mode: bool = False, **kwargs: Any
    ) -> None:
        """Create adapter `adapter_name`: its angles and scales, sized by the variant."""
        if self.out_features % config.group_size != 0:
            raise ValueError(
                f"The out_features of the base layer must be divisible by group_size ({config.group_size}) when "
                f"using RoadLayer; this layer has {self.out_features}. Choose a group_size that divides it."
            )
        self.variant[adapter_name] = config.variant
        self.group_size[adapter_name] = config.group_size
        size = int(self.out_features * _PARAMETERS_PER_OUTPUT[config.variant])
        self.road_theta[adapter_name] = nn.Parameter(torch.empty(size))
        self.road_alpha[adapter_name] = nn.Parameter(torch.empty(size))
        self.reset_parameters(adapter_name, config.init_weights)
        self._finish_new_adapter(adapter_name, inference_mode)

    def reset_parameters(self, adapter_name: str, init_weights: bool) -> None:
        """Angles 0 and scales 1 (the identity); with `init_weights=False` angles ~ N(0, 0.5) and scales
        ~ N(1, 0.5), angles drawn first, from torch's global generator."""
        theta, alpha = self.road_theta[adapter_name], self.road_alpha[adapter_name]
        with torch.no_grad():
            if init_weights:
                theta.zero_()
                alpha.fill_(1.0)
            else:
                theta.normal_(mean=0.0, std=0.5)
                alpha.normal_(mean=1.0, std=0.5)

    def _rotation(self, adapter_name: str) -> torch.Tensor:
        """R of the adapter (out x out), in fp32, without gradient (for merging)."""
        theta, alpha = self.road_theta[adapter_name].detach(), self.road_alpha[adapter_name].detach()
        return rotation_matrix(
            self.variant[adapter_name], self.group_size[adapter_name], theta.float(), alpha.float()
        )

    # ----- forward: the output is rotated, not added to -----
    def _apply_adapter(
        self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, base_result: torch.Tensor
    ) -> torch.Tensor:
        theta, alpha = self.road_theta[adapter_name], self.road_alpha[adapter_name]
        result = self._cast_input_dtype(result, theta.dtype)
        return rotate(result, self.variant[adapter_name], self.group_size[adapter_name], theta, alpha)

    # ----- merging: W <- R W, b <- R b -----
    def _merged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        return self._rotation(adapter_name) @ weight.float()

    def _unmerged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        return torch.linalg.inv(self._rotation(adapter_name)) @ weight.float()

    def _merged_bias(self, adapter_name: str) -> torch.Tensor | None:
        bias = self.get_base_layer().bias
        return None if bias is None else self._rotation(adapter_name) @ bias.data.float()

    def _unmerged_bias(self, adapter_name: str) -> torch.Tensor | None:
        bias = self.get_base_layer().bias
        return None if bias is None else torch.linalg.inv(self._rotation(adapter_name)) @ bias.data.float()

    def __repr__(self) -> str:
        return "road." + super().__repr__()


class Linear(RoadLayer, nn.Module):
    """RoAd on `nn.Linear`."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: RoadConfig, **kwargs: Any) -> None:
        nn.Module.__init__(self)
        RoadLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)
