"""Tuners that own frozen random projections shared by all their layers (VeRA, PVeRA, RandLoRA).

Each adapter draws one pair of projections from its config's `projection_prng_key`, sized for its
largest targeted `nn.Linear`/`Conv1D` layer (bitsandbytes' linear layers count as `nn.Linear`), before
its layers are built; every layer references the pair and uses its own slice of it. The pair lives in two
BufferDicts on the tuner (named by `projection_names`), saved with the adapter only when its config's
`save_projection` is set (otherwise re-drawn from the key on loading). This base holds what those methods
share: the adapters of one model agree on the key and on saving, the pair is drawn in the base weight's
dtype and kept in fp32 where the adapter is, and it is deleted with its adapter. A method states its names
and how it draws the pair (`_draw_projections`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._buffer_dict import BufferDict
from ._dispatch import base_of
from ._linear_kind import conv1d_type
from .tuners_utils import BaseTuner

_HALF = (torch.float16, torch.bfloat16)


def linear_out_in(module: nn.Module) -> tuple[int, int] | None:
    """(out, in) of a Linear (bitsandbytes' too) or Conv1D base layer; None for other layer kinds."""
    base = base_of(module)
    if isinstance(base, nn.Linear):
        return base.out_features, base.in_features
    if isinstance(base, conv1d_type()):
        return base.weight.shape[1], base.weight.shape[0]
    return None


def kaiming_pair(
    key: int, first_shape: tuple[int, int], second_shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Kaiming-uniform matrices, the first drawn first, from one CPU generator seeded with `key` (the
    same key gives the same matrices, bit for bit): VeRA's and PVeRA's projections."""
    generator = torch.Generator(device="cpu").manual_seed(key)
    first = torch.empty(first_shape, device="cpu")
    second = torch.empty(second_shape, device="cpu")
    nn.init.kaiming_uniform_(first, generator=generator)
    nn.init.kaiming_uniform_(second, generator=generator)
    return first, second


def _same_tensor_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device


class SharedProjectionTuner(BaseTuner):
    """A tuner whose adapters each own a pair of frozen random projections shared by all their layers."""

    projection_names: tuple[str, str]  # the tuner's two BufferDicts, as peft names them ("vera_A", "vera_B")
    method_label: str  # the method's name in peft's error messages ("VeRA")
    key_label: str | None = None  # its name in peft's message about keys, where that differs ("Vera")
    # whether adapters whose pairs have the same layout hold the very same tensors (VeRA, as peft does)
    shares_equal_projections = False

    def _draw_projections(
        self, config: Any, out_features: int, in_features: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The adapter's pair for a largest layer of `out_features` x `in_features`, drawn on the CPU."""
        raise NotImplementedError

    def _check_new_adapter_config(self, config: Any) -> None:
        super()._check_new_adapter_config(config)
        keys = {c.projection_prng_key for c in self.peft_config.values() if c is not config}
        if keys and config.projection_prng_key not in keys:
            raise ValueError(
                f"{self.key_label or self.method_label} PRNG initialisation key must be the same for all "
                f"adapters. Got config.projection_prng_key={config.projection_prng_key} but previous config "
                f"had {keys.pop()}."
            )
        saves = sorted({c.save_projection for c in self.peft_config.values()})
        if len(saves) > 1:
            raise ValueError(
                f"{self.method_label} projection weights must be saved for all adapters or none, but got "
                f"multiple different values: {saves}"
            )

    def _pre_injection_hook(
        self, model: nn.Module, config: Any, adapter_name: str, matched: list[str]
    ) -> None:
        """Draw this adapter's pair, sized for its largest targeted layer, in the base weight's dtype."""
        modules = [model.get_submodule(key) for key in matched]
        shapes = [s for s in map(linear_out_in, modules) if s is not None]
        if not shapes:
            raise ValueError(
                f"No layers types compatible with {self.method_label} were found. Please check "
                f"`peft_config.target_modules`: {self.method_label} adapts `torch.nn.Linear` and "
                "`transformers.pytorch_utils.Conv1D` layers only."
            )
        first, second = self._draw_projections(config, max(s[0] for s in shapes), max(s[1] for s in shapes))
        weight = base_of(next(m for m in modules if linear_out_in(m) is not None)).weight
        dtype = weight.dtype if weight.dtype.is_floating_point else first.dtype
        device = weight.device if weight.device.type != "meta" else first.device
        first_name, second_name = self.projection_names
        if first_name not in self._modules:
            for name in self.projection_names:
                setattr(self, name, BufferDict(persistent=config.save_projection))
        firsts, seconds = self._modules[first_name], self._modules[second_name]
        first, second = first.to(device, dtype), second.to(device, dtype)
        if self.shares_equal_projections:
            # every adapter draws from the same key, so a pair of the same layout holds the same numbers
            for other in list(firsts.keys()):
                if _same_tensor_layout(firsts[other], first) and _same_tensor_layout(seconds[other], second):
                    first, second = firsts[other], seconds[other]
                    break
        firsts[adapter_name] = first
        seconds[adapter_name] = second

    def _cast_adapter_dtype(self, adapter_name: str, layers: list[nn.Module] | None = None) -> None:
        super()._cast_adapter_dtype(adapter_name, layers)
        for name in self.projection_names:
            projections = self._modules[name]
            if projections[adapter_name].dtype in _HALF:  # fp32 like the trained tensors they multiply
                projections[adapter_name] = projections[adapter_name].float()

    def _tuner_state_keys(self, adapter_name: str) -> dict[str, str]:
        if not self.peft_config[adapter_name].save_projection:
            return {}
        return {f"{name}.{adapter_name}": name for name in self.projection_names}

    def _drop_projections(self, adapter_name: str) -> None:
        for name in self.projection_names:
            projections = self._modules.get(name)
            if projections is not None and adapter_name in projections:
                del projections[adapter_name]

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._drop_projections(adapter_name)

    def _remove_partial_adapter(self, model: nn.Module, adapter_name: str) -> None:
        super()._remove_partial_adapter(model, adapter_name)
        self._drop_projections(adapter_name)
