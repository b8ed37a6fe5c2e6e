"""UniLoraModel: the Uni-LoRA tuner. It owns each adapter's trained vector `theta_d` and, once the
adapter's layers exist, deals its entries out to them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .._dispatch import CONV1D
from ..tuners_utils import BaseTuner
from .config import UniLoraConfig
from .layer import Linear, UniLoraLayer


def balanced_assignment(count: int, theta_d_length: int, seed: int) -> torch.Tensor:
    """`count` positions into theta_d, each entry used floor or ceil of count / theta_d_length times:
    every entry as often as the floor allows, `count % theta_d_length` distinct entries once more, the
    whole shuffled. Drawn from numpy's generator seeded with `seed`, the same numbers as PEFT's."""
    if count < 0 or theta_d_length <= 0:
        raise ValueError(f"Cannot assign {count} positions to a theta_d of length {theta_d_length}.")
    rng = np.random.default_rng(seed)
    positions = np.repeat(np.arange(theta_d_length), count // theta_d_length)
    extra = count % theta_d_length
    if extra:
        positions = np.concatenate([positions, rng.choice(theta_d_length, size=extra, replace=False)])
    rng.shuffle(positions)
    return torch.as_tensor(positions, dtype=torch.long)


def use_scales(positions: torch.Tensor, theta_d_length: int) -> torch.Tensor:
    """1 / sqrt(how often each theta_d entry is used) (0 for unused entries), per entry of theta_d."""
    counts = torch.bincount(positions, minlength=theta_d_length)
    scales = torch.zeros(theta_d_length, dtype=torch.float32)
    used = counts > 0
    scales[used] = counts[used].float().rsqrt()
    return scales


def initial_theta_d(config: UniLoraConfig) -> torch.Tensor:
    """theta_d ~ U(-bound, bound) (init_weights) or N(0, 1), from torch's global generator."""
    if config.init_weights:
        theta = torch.empty(config.theta_d_length)
        return nn.init.uniform_(theta, -config.init_theta_d_bound, config.init_theta_d_bound)
    return torch.randn(config.theta_d_length)


class UniLoraModel(BaseTuner):
    """Adds Uni-LoRA to `nn.Linear` and transformers' `Conv1D` layers.

    `unilora_theta_d` (a ParameterDict on this tuner, referenced by every layer) holds each adapter's
    vector, saved once as `base_model.unilora_theta_d`. Adapters are independent: each has its own
    theta_d, rank, targets and assignment.

    Example:
        >>> from peftkit import UniLoraConfig, get_peft_model
        >>> model = get_peft_model(model, UniLoraConfig(r=4, theta_d_length=256, target_modules=["q_proj"]))
    """

    prefix = "unilora_"
    tuner_layer_cls = UniLoraLayer
    layer_classes = {nn.Linear: Linear, CONV1D: Linear}
    uses_shared_state = True
    shared_state_names = ("unilora_theta_d",)
    generate_index = staticmethod(balanced_assignment)  # PEFT's name for it

    def _pre_injection_hook(
        self, model: nn.Module, config: UniLoraConfig, adapter_name: str, matched: list[str]
    ) -> None:
        if "unilora_theta_d" not in self._modules:
            self.unilora_theta_d = nn.ParameterDict({})
        if adapter_name not in self.unilora_theta_d:
            self.unilora_theta_d[adapter_name] = nn.Parameter(initial_theta_d(config))

    def _layer_kwargs(self, config: UniLoraConfig, key: str) -> dict[str, Any]:
        return {"unilora_theta_d": self.unilora_theta_d, "config": config}

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        self._assign(adapter_name)

    def _assign(self, adapter_name: str) -> None:
        """Deal theta_d's entries out to the adapter's layers, in module order: each layer's A (r x in)
        then B (out x r) take the next positions of one balanced assignment over all of them."""
        config = self.peft_config[adapter_name]
        layers = [m for m in self.model.modules() if isinstance(m, UniLoraLayer) and adapter_name in m.r]
        shapes = [((m.r[adapter_name], m.in_features), (m.out_features, m.r[adapter_name])) for m in layers]
        count = sum(a[0] * a[1] + b[0] * b[1] for a, b in shapes)
        positions = balanced_assignment(count, config.theta_d_length, config.proj_seed)
        scales = use_scales(positions, config.theta_d_length)
        start = 0
        for layer, (shape_A, shape_B) in zip(layers, shapes):
            end_A = start + shape_A[0] * shape_A[1]
            end = end_A + shape_B[0] * shape_B[1]
            indices_A, indices_B = positions[start:end_A].view(shape_A), positions[end_A:end].view(shape_B)
            layer.set_assignment(
                adapter_name,
                indices_A.clone(),
                indices_B.clone(),
                scales[indices_A],
                scales[indices_B],
                persistent=config.save_indices,
            )
            start = end

    def _tuner_state_keys(self, adapter_name: str) -> dict[str, str]:
        return {f"unilora_theta_d.{adapter_name}": "unilora_theta_d"}

    def _drop_theta_d(self, adapter_name: str) -> None:
        theta_d = self._modules.get("unilora_theta_d")
        if theta_d is not None and adapter_name in theta_d:
            del theta_d[adapter_name]

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._drop_theta_d(adapter_name)

    def _remove_partial_adapter(self, model: nn.Module, adapter_name: str) -> None:
        super()._remove_partial_adapter(model, adapter_name)
        self._drop_theta_d(adapter_name)
