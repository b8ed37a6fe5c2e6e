"""FrodModel: the FRoD tuner. It computes the bases shared by the layers of each role and the positions of
their sparse entries, once per adapter, before the layers are created, and saves them with the adapter."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .._buffer_dict import BufferDict
from .._dispatch import CONV1D, base_of
from .._linear_kind import UnsupportedLayerError, conv1d_type
from .._quantized import quantization_backend
from ..tuners_utils import BaseTuner
from .config import FrodConfig
from .layer import FrodLayer, Linear
from .projections import category_of, layer_index_of, shared_basis, sparse_pattern

_SHARED = ("frod_V", "frod_s_indices", "frod_s_size")


def _weights_by_block(model: nn.Module, keys: list[str]) -> dict[int, dict[str, torch.Tensor]]:
    """block index -> role -> (out, in) weight, for the Linear/Conv1D modules among `keys` (model order)."""
    found: dict[int, dict[str, torch.Tensor]] = {}
    position = 0
    for key in keys:
        base = base_of(model.get_submodule(key))
        backend = quantization_backend(base)
        if backend is not None:
            raise UnsupportedLayerError(
                f"FRoD cannot adapt {key} ({type(base).__name__}, quantized by {backend}): it rebuilds the layer's "
                "weight from factors of the weight's own decomposition, which it runs instead of the base layer "
                "and writes back on merge. Load the base model unquantized for FRoD, or use LoRA on the quantized "
                "model (peft 0.21's FRoD fails on quantized layers too)."
            )
        if isinstance(base, nn.Linear):
            weight = base.weight
        elif isinstance(base, conv1d_type()):
            weight = base.weight.T
        else:
            continue
        found.setdefault(layer_index_of(key, position), {})[category_of(key)] = weight
        position += 1
    return found


def _refresh_u_after_load(tuner: FrodModel, incompatible_keys: Any) -> None:
    """A V loaded from a file may differ from the one computed on injection (another LAPACK may flip
    eigenvector signs): each layer's U is rebuilt from the V it now has."""
    tuner._refresh_u()


class FrodModel(BaseTuner):
    """Adds FRoD to `nn.Linear` and transformers' `Conv1D` layers.

    `frod_V`, `frod_s_indices`, `frod_s_size` (ModuleDicts on this tuner: role -> BufferDict of adapters)
    hold each adapter's shared basis and S positions per role, saved as `base_model.frod_V.<role>` etc. with
    `save_projection=True`, else rebuilt from the base weights and `projection_prng_key` on loading.

    Example:
        >>> from peftkit import FrodConfig, get_peft_model
        >>> model = get_peft_model(model, FrodConfig(target_modules=["q_proj", "v_proj"], sparse_rate=0.01))
    """

    prefix = "frod_"
    uses_shared_state = True  # its layers need the tuner's shared tensors (PEFT sets it too)
    tuner_layer_cls = FrodLayer
    layer_classes = {nn.Linear: Linear, CONV1D: Linear}

    def __init__(self, model: nn.Module, peft_config: Any, adapter_name: str, **kwargs: Any) -> None:
        super().__init__(model, peft_config, adapter_name, **kwargs)
        self.register_load_state_dict_post_hook(_refresh_u_after_load)

    def _refresh_u(self) -> None:
        for module in self._tuner_layers(self.model):
            if isinstance(module, FrodLayer):
                module.refresh_u()

    def _check_new_adapter_config(self, config: FrodConfig) -> None:
        super()._check_new_adapter_config(config)
        others = [c for c in self.peft_config.values() if c is not config]
        keys = {c.projection_prng_key for c in others}
        if keys and config.projection_prng_key not in keys:
            raise ValueError(
                "FRoD projection initialization key must be the same for all adapters. Got "
                f"config.projection_prng_key={config.projection_prng_key} but previous config had {keys.pop()}."
            )
        for name in ("save_projection", "runtime_offload_base_weight"):
            values = sorted({getattr(c, name) for c in self.peft_config.values()})
            if len(values) > 1:
                raise ValueError(f"FRoD's {name} must be the same for all adapters, got {values}.")

    def _pre_injection_hook(
        self, model: nn.Module, config: FrodConfig, adapter_name: str, matched: list[str]
    ) -> None:
        """Compute adapter `adapter_name`'s basis and S positions for every role among its targets."""
        weights = _weights_by_block(model, matched)
        if not weights:
            raise ValueError(
                "No layer types compatible with FRoD were found. Please check `peft_config.target_modules`: FRoD "
                "adapts `torch.nn.Linear` and `transformers.pytorch_utils.Conv1D` layers only."
            )
        for name in _SHARED:
            if name not in self._modules:
                setattr(self, name, nn.ModuleDict())
        generator = torch.Generator(device="cpu").manual_seed(config.projection_prng_key)
        roles = sorted({role for by_role in weights.values() for role in by_role})
        bar = tqdm(roles, disable=not config.progressbar, desc="FRoD shared bases", unit="role")
        for role in bar:
            matrices = [by_role[role] for _, by_role in sorted(weights.items()) if role in by_role]
            if len({m.shape[1] for m in matrices}) > 1:
                raise ValueError(
                    f"FRoD shares one basis among the layers of role '{role}', but they have different input "
                    f"sizes {sorted({m.shape[1] for m in matrices})}; target them with separate adapters."
                )
            basis = shared_basis(
                [m.detach().to(torch.float32).cpu() for m in matrices], config.regularization_alpha
            )
            basis = basis.to(matrices[0].device, matrices[0].dtype)
            values = {
                "frod_V": basis,
                "frod_s_indices": sparse_pattern(basis.shape[0], config.sparse_rate, generator),
                "frod_s_size": torch.tensor([basis.shape[0], basis.shape[0]], dtype=torch.long),
            }
            for name, tensor in values.items():
                by_role_dict = getattr(self, name)
                if role not in by_role_dict:
                    by_role_dict[role] = BufferDict(persistent=config.save_projection)
                by_role_dict[role][adapter_name] = tensor

    def _layer_kwargs(self, config: FrodConfig, key: str) -> dict[str, Any]:
        """The shared BufferDicts of the module's role (None for a module the bases were not computed for,
        which dispatch then rejects as an unsupported layer)."""
        role = category_of(key)
        kwargs: dict[str, Any] = {"config": config}
        for name in _SHARED:
            by_role = getattr(self, name)
            kwargs[name] = by_role[role] if role in by_role else None  # noqa: SIM401 (ModuleDict: no .get)
        return kwargs

    def _may_be_empty(self, file_key: str, adapter_name: str) -> bool:
        """S's values are empty where a layer has no sparse entries (sparse_rate=0), as its positions show."""
        if not file_key.endswith(".frod_lambda_s_values"):
            return False
        return any(
            file_key.endswith(f"{key}.frod_lambda_s_values")
            and layer.frod_s_indices[adapter_name].shape[1] == 0
            for key, layer in self.model.named_modules()
            if isinstance(layer, FrodLayer) and adapter_name in layer.frod_lambda_s_values
        )

    def _tuner_state_keys(self, adapter_name: str) -> dict[str, str]:
        if not self.peft_config[adapter_name].save_projection:
            return {}
        return {
            f"{name}.{role}.{adapter_name}": f"{name}.{role}"
            for name in _SHARED
            for role, by_adapter in getattr(self, name, {}).items()
            if adapter_name in by_adapter
        }

    def _drop_shared(self, adapter_name: str) -> None:
        """Remove the adapter's shared tensors; a role no adapter uses any more goes too."""
        for name in _SHARED:
            by_role = self._modules.get(name)
            for role in list(by_role or ()):
                if adapter_name in by_role[role]:
                    del by_role[role][adapter_name]
                if not len(by_role[role]):
                    del by_role[role]

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._drop_shared(adapter_name)

    def _remove_partial_adapter(self, model: nn.Module, adapter_name: str) -> None:
        super()._remove_partial_adapter(model, adapter_name)
        self._drop_shared(adapter_name)

    def _restore_base_weights(self) -> None:
        """Bring runtime-offloaded base weights back beside their adapters (before the layers go away)."""
        for module in self._tuner_layers(self.model):
            if isinstance(module, FrodLayer):
                module._bring_back_base_weight()

    def merge_and_unload(
        self, progressbar: bool = False, safe_merge: bool = False, adapter_names: list[str] | None = None
    ) -> nn.Module:
        self._restore_base_weights()
        return super().merge_and_unload(progressbar, safe_merge, adapter_names)

    def unload(self) -> nn.Module:
        self._restore_base_weights()
        return super().unload()
