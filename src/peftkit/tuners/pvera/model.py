"""PveraModel: the PVeRA tuner. It owns the shared random projections (one pair per adapter)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._buffer_dict import BufferDict
from .._dispatch import CONV1D, base_of
from .._linear_kind import conv1d_type
from ..tuners_utils import BaseTuner
from .bnb import dispatch_bnb
from .config import PveraConfig
from .layer import Linear, PveraLayer

_HALF = (torch.float16, torch.bfloat16)


def draw_projections(
    key: int, r: int, in_features: int, out_features: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """PVeRA's frozen projections: A (2r x in), then B (out x r), Kaiming-uniform from one CPU generator
    seeded with `key` (so the same key gives the same matrices, bit for bit)."""
    generator = torch.Generator(device="cpu").manual_seed(key)
    pvera_A = torch.empty(2 * r, in_features, device="cpu")
    pvera_B = torch.empty(out_features, r, device="cpu")
    nn.init.kaiming_uniform_(pvera_A, generator=generator)
    nn.init.kaiming_uniform_(pvera_B, generator=generator)
    return pvera_A, pvera_B


def _linear_dims(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a Linear (also quantized) or Conv1D base layer; None for kinds PVeRA does not adapt."""
    base = base_of(module)
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    if isinstance(base, conv1d_type()):
        return base.weight.shape[0], base.weight.shape[1]
    return None


class PveraModel(BaseTuner):
    """Adds PVeRA to `nn.Linear` and transformers' `Conv1D` layers, and to bitsandbytes' 8-bit and 4-bit
    linear layers.

    `pvera_A` / `pvera_B` (BufferDicts on this tuner, referenced by every layer) hold each adapter's
    projections, drawn for its own rank and largest targeted layer (so adapters of any ranks and targets
    live side by side). With `save_projection=True` they are saved as `base_model.pvera_A` /
    `base_model.pvera_B`; otherwise they are re-drawn from `projection_prng_key`.

    Example:
        >>> from peftkit import PveraConfig, get_peft_model
        >>> model = get_peft_model(model, PveraConfig(r=128, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "pvera_lambda_"
    uses_shared_state = True  # its layers need the tuner's shared tensors (PEFT sets it too)
    tuner_layer_cls = PveraLayer
    layer_classes = {nn.Linear: Linear, CONV1D: Linear}
    layer_dispatchers = (dispatch_bnb,)

    def _check_new_adapter_config(self, config: PveraConfig) -> None:
        super()._check_new_adapter_config(config)
        others = [c for c in self.peft_config.values() if c is not config]
        keys = {c.projection_prng_key for c in others}
        if keys and config.projection_prng_key not in keys:
            raise ValueError(
                f"PVeRA PRNG initialisation key must be the same for all adapters. Got "
                f"config.projection_prng_key={config.projection_prng_key} but previous config had {keys.pop()}."
            )
        saves = {c.save_projection for c in self.peft_config.values()}
        if len(saves) > 1:
            raise ValueError(
                "PVeRA projection weights must be saved for all adapters or none, but got multiple different "
                f"values: {sorted(saves)}"
            )

    def _pre_injection_hook(
        self, model: nn.Module, config: PveraConfig, adapter_name: str, matched: list[str]
    ) -> None:
        """Draw this adapter's projections, sized for its rank and largest targeted layer, in the base dtype."""
        modules = [model.get_submodule(key) for key in matched]
        dims = [d for d in map(_linear_dims, modules) if d is not None]
        if not dims:
            raise ValueError(
                "No layers types compatible with PVeRA were found. Please check `peft_config.target_modules`: "
                "PVeRA adapts `torch.nn.Linear` and `transformers.pytorch_utils.Conv1D` layers only."
            )
        pvera_A, pvera_B = draw_projections(
            config.projection_prng_key, config.r, max(d[0] for d in dims), max(d[1] for d in dims)
        )
        weight = next(base_of(m).weight for m in modules if _linear_dims(m) is not None)
        dtype = weight.dtype if weight.dtype.is_floating_point else pvera_A.dtype
        device = weight.device if weight.device.type != "meta" else pvera_A.device
        if "pvera_A" not in self._modules:
            self.pvera_A = BufferDict(persistent=config.save_projection)
            self.pvera_B = BufferDict(persistent=config.save_projection)
        self.pvera_A[adapter_name] = pvera_A.to(device, dtype)
        self.pvera_B[adapter_name] = pvera_B.to(device, dtype)

    def _layer_kwargs(self, config: PveraConfig, key: str) -> dict[str, Any]:
        return {"pvera_A": self.pvera_A, "pvera_B": self.pvera_B, "r": config.r, "config": config}

    def _cast_adapter_dtype(self, adapter_name: str, layers: list[nn.Module] | None = None) -> None:
        super()._cast_adapter_dtype(adapter_name, layers)
        for projections in (self.pvera_A, self.pvera_B):
            if projections[adapter_name].dtype in _HALF:  # fp32 like the vectors they multiply
                projections[adapter_name] = projections[adapter_name].float()

    def _tuner_state_keys(self, adapter_name: str) -> dict[str, str]:
        if not self.peft_config[adapter_name].save_projection:
            return {}
        return {f"pvera_A.{adapter_name}": "pvera_A", f"pvera_B.{adapter_name}": "pvera_B"}

    def _drop_projections(self, adapter_name: str) -> None:
        for name in ("pvera_A", "pvera_B"):
            projections = self._modules.get(name)
            if projections is not None and adapter_name in projections:
                del projections[adapter_name]

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._drop_projections(adapter_name)

    def _remove_partial_adapter(self, model: nn.Module, adapter_name: str) -> None:
        super()._remove_partial_adapter(model, adapter_name)
        self._drop_projections(adapter_name)
