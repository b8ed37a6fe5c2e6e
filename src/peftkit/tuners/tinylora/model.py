"""TinyLoraModel: the TinyLoRA tuner. It owns the trained vectors, one per group of tied layers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._dispatch import CONV1D, base_of
from .._linear_kind import conv1d_type
from ..tuners_utils import BaseTuner
from .config import TinyLoraConfig
from .layer import Embedding, Linear, TinyLoraLayer


def group_of(index: int, count: int, weight_tying: float) -> int:
    """The group of the `index`-th of `count` adapted layers: `round(count * (1 - weight_tying))` groups
    (at least one) of consecutive layers, the last one taking the remainder."""
    groups = max(1, round(count * (1.0 - weight_tying)))
    size = max(1, count // groups)
    return min(index // size, groups - 1)


def _is_adaptable(module: nn.Module) -> bool:
    return isinstance(base_of(module), (nn.Linear, nn.Embedding, conv1d_type()))


class TinyLoraModel(BaseTuner):
    """Adds TinyLoRA to `nn.Linear`, `nn.Embedding` and transformers' `Conv1D` layers.

    `tinylora_v[adapter][group]` (a ModuleDict on this tuner, referenced by every layer) holds the trained
    vectors; the adapted layers are numbered in model order, which fixes each one's group and the seed of
    its projection. Saved as `base_model.tinylora_v.<group>`.

    Example:
        >>> from peftkit import TinyLoraConfig, get_peft_model
        >>> model = get_peft_model(model, TinyLoraConfig(r=2, u=64, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "tinylora_"
    uses_shared_state = True  # its layers need the tuner's shared tensors (PEFT sets it too)
    tuner_layer_cls = TinyLoraLayer
    layer_classes = {nn.Linear: Linear, CONV1D: Linear, nn.Embedding: Embedding}
    shared_state_names = ("tinylora_v",)

    def __init__(self, model: nn.Module, config: Any, adapter_name: str, **kwargs: Any) -> None:
        # adapter -> (module name -> its index among the adapter's adapted layers), filled per injection
        self._target_key_to_idx: dict[str, dict[str, int]] = {}
        super().__init__(model, config, adapter_name, **kwargs)

    def _check_new_adapter_config(self, config: TinyLoraConfig) -> None:
        super()._check_new_adapter_config(config)
        saves = sorted({c.save_projection for c in self.peft_config.values()})
        if len(saves) > 1:
            raise TypeError(
                "TinyLoRA projection tensors must be saved for all adapters or none, but got multiple different "
                f"values: {saves}"
            )

    def _pre_injection_hook(
        self, model: nn.Module, config: TinyLoraConfig, adapter_name: str, matched: list[str]
    ) -> None:
        """Number the adapter's layers and create its vectors, one per group, in group order (so that
        `init_weights="uniform"` draws them from torch's generator in peft's order)."""
        adaptable = [key for key in matched if _is_adaptable(model.get_submodule(key))]
        self._target_key_to_idx[adapter_name] = {key: i for i, key in enumerate(adaptable)}
        if "tinylora_v" not in self._modules:
            self.tinylora_v = nn.ModuleDict({})
        vectors = nn.ParameterDict({})
        for index, key in enumerate(adaptable):
            group = str(group_of(index, len(adaptable), config.weight_tying))
            if group not in vectors:
                weight = model.get_submodule(key).weight
                vectors[group] = nn.Parameter(self._initial_vector(config, weight))
        self.tinylora_v[adapter_name] = vectors

    @staticmethod
    def _initial_vector(config: TinyLoraConfig, weight: torch.Tensor) -> torch.Tensor:
        """v in the first layer's weight dtype: zeros (a no-op), U(-bound, bound), or uninitialised."""
        dtype = weight.dtype if weight.dtype.is_floating_point else None
        device = weight.device if weight.device.type != "meta" else None
        vector = torch.empty(config.u, dtype=dtype, device=device)
        if config.init_weights is True:
            nn.init.zeros_(vector)
        elif config.init_weights == "uniform":
            nn.init.uniform_(vector, -config.init_v_bound, config.init_v_bound)
        return vector

    def _layer_kwargs(self, config: TinyLoraConfig, key: str) -> dict[str, Any]:
        indices = self._target_key_to_idx[self._adapter_being_injected(config)]
        index = indices.get(key, 0)
        group = str(group_of(index, len(indices), config.weight_tying))
        return {
            "tinylora_v": self.tinylora_v,
            "v_key": group,
            "r": config.r,
            "layer_idx": index,
            "config": config,
            "fan_in_fan_out": config.fan_in_fan_out,
        }

    def _adapter_being_injected(self, config: TinyLoraConfig) -> str:
        return next(name for name, c in self.peft_config.items() if c is config)

    def _tuner_state_keys(self, adapter_name: str) -> dict[str, str]:
        vectors = self._modules.get("tinylora_v")
        if vectors is None or adapter_name not in vectors:
            return {}
        return {
            f"tinylora_v.{adapter_name}.{group}": f"tinylora_v.{group}" for group in vectors[adapter_name]
        }

    def _drop_vectors(self, adapter_name: str) -> None:
        vectors = self._modules.get("tinylora_v")
        if vectors is not None and adapter_name in vectors:
            del vectors[adapter_name]
        self._target_key_to_idx.pop(adapter_name, None)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._drop_vectors(adapter_name)

    def _remove_partial_adapter(self, model: nn.Module, adapter_name: str) -> None:
        super()._remove_partial_adapter(model, adapter_name)
        self._drop_vectors(adapter_name)
