"""VeraModel: the VeRA tuner. It owns the shared random projections (one pair per adapter)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._buffer_dict import BufferDict
from .._dispatch import CONV1D, base_of
from .._linear_kind import conv1d_type
from ..tuners_utils import BaseTuner
from .config import VeraConfig
from .layer import Linear, VeraLayer

_HALF = (torch.float16, torch.bfloat16)


def draw_projections(
    key: int, r: int, in_features: int, out_features: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """VeRA's frozen projections: A (r x in), then B (out x r), Kaiming-uniform from one CPU generator
    seeded with `key` (so the same key gives the same matrices, bit for bit)."""
    generator = torch.Generator(device="cpu").manual_seed(key)
    vera_A = torch.empty(r, in_features, device="cpu")
    vera_B = torch.empty(out_features, r, device="cpu")
    nn.init.kaiming_uniform_(vera_A, generator=generator)
    nn.init.kaiming_uniform_(vera_B, generator=generator)
    return vera_A, vera_B


def _linear_dims(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a Linear or Conv1D base layer; None for layer kinds VeRA does not adapt."""
    base = base_of(module)
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    if isinstance(base, conv1d_type()):
        return base.weight.shape[0], base.weight.shape[1]
    return None


def _same_tensor_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device


class VeraModel(BaseTuner):
    """Adds VeRA to `nn.Linear` and transformers' `Conv1D` layers.

    `vera_A` / `vera_B` (BufferDicts on this tuner, referenced by every layer) hold each adapter's
    projections, sized for the largest targeted layer. With `save_projection=True` they are saved as
    `base_model.vera_A` / `base_model.vera_B`; otherwise they are re-drawn from `projection_prng_key`.

    Example:
        >>> from peftkit import VeraConfig, get_peft_model
        >>> model = get_peft_model(model, VeraConfig(r=128, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "vera_lambda_"
    uses_shared_state = True  # its layers need the tuner's shared tensors (PEFT sets it too)
    tuner_layer_cls = VeraLayer
    layer_classes = {nn.Linear: Linear, CONV1D: Linear}

    def _check_new_adapter_config(self, config: VeraConfig) -> None:
        super()._check_new_adapter_config(config)
        others = [c for c in self.peft_config.values() if c is not config]
        keys = {c.projection_prng_key for c in others}
        if keys and config.projection_prng_key not in keys:
            raise ValueError(
                f"Vera PRNG initialisation key must be the same for all adapters. Got "
                f"config.projection_prng_key={config.projection_prng_key} but previous config had {keys.pop()}."
            )
        saves = {c.save_projection for c in self.peft_config.values()}
        if len(saves) > 1:
            raise ValueError(
                "VeRA projection weights must be saved for all adapters or none, but got multiple different values: "
                f"{sorted(saves)}"
            )

    def _pre_injection_hook(
        self, model: nn.Module, config: VeraConfig, adapter_name: str, matched: list[str]
    ) -> None:
        """Draw this adapter's projections, sized for the largest targeted layer, in the base dtype."""
        modules = [model.get_submodule(key) for key in matched]
        dims = [d for d in map(_linear_dims, modules) if d is not None]
        if not dims:
            raise ValueError(
                "No layers types compatible with VeRA were found. Please check `peft_config.target_modules`: VeRA "
                "adapts `torch.nn.Linear` and `transformers.pytorch_utils.Conv1D` layers only."
            )
        vera_A, vera_B = draw_projections(
            config.projection_prng_key, config.r, max(d[0] for d in dims), max(d[1] for d in dims)
        )
        weight = next(m.weight for m in modules if _linear_dims(m) is not None)
        dtype = weight.dtype if weight.dtype.is_floating_point else vera_A.dtype
        device = weight.device if weight.device.type != "meta" else vera_A.device
        if "vera_A" not in self._modules:
            self.vera_A = BufferDict(persistent=config.save_projection)
            self.vera_B = BufferDict(persistent=config.save_projection)
        vera_A, vera_B = vera_A.to(device, dtype), vera_B.to(device, dtype)
        # Every adapter draws from the same key, so an adapter whose projections have the same shape holds
        # the same matrices: share those tensors (as PEFT does) instead of keeping a copy per adapter.
        for other in list(self.vera_A.keys()):
            if _same_tensor_layout(self.vera_A[other], vera_A) and _same_tensor_layout(
                self.vera_B[other], vera_B
            ):
                vera_A, vera_B = self.vera_A[other], self.vera_B[other]
                break
        self.vera_A[adapter_name] = vera_A
        self.vera_B[adapter_name] = vera_B

    def _layer_kwargs(self, config: VeraConfig, key: str) -> dict[str, Any]:
        return {"vera_A": self.vera_A, "vera_B": self.vera_B, "r": config.r, "config": config}

    def _cast_adapter_dtype(self, adapter_name: str, layers: list[nn.Module] | None = None) -> None:
        super()._cast_adapter_dtype(adapter_name, layers)
        for projections in (self.vera_A, self.vera_B):
            if projections[adapter_name].dtype in _HALF:  # fp32 like the vectors they multiply
                projections[adapter_name] = projections[adapter_name].float()

    def _tuner_state_keys(self, adapter_name: str) -> dict[str, str]:
        if not self.peft_config[adapter_name].save_projection:
            return {}
        return {f"vera_A.{adapter_name}": "vera_A", f"vera_B.{adapter_name}": "vera_B"}

    def _drop_projections(self, adapter_name: str) -> None:
        for name in ("vera_A", "vera_B"):
            projections = self._modules.get(name)
            if projections is not None and adapter_name in projections:
                del projections[adapter_name]

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._drop_projections(adapter_name)

    def _remove_partial_adapter(self, model: nn.Module, adapter_name: str) -> None:
        super()._remove_partial_adapter(model, adapter_name)
        self._drop_projections(adapter_name)
