"""RandLoraModel: the RandLoRA tuner. It owns the shared random bases (one pair per adapter)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._buffer_dict import BufferDict
from .._dispatch import CONV1D, base_of
from .._linear_kind import conv1d_type
from ..tuners_utils import BaseTuner
from .bases import draw_bases
from .bnb import dispatch_bnb
from .config import RandLoraConfig
from .layer import Linear, RandLoraLayer

_HALF = (torch.float16, torch.bfloat16)


def _out_in(module: nn.Module) -> tuple[int, int] | None:
    """(out, in) of a Linear (bitsandbytes' too) or Conv1D base layer; None for kinds RandLoRA does not adapt."""
    base = base_of(module)
    if isinstance(base, nn.Linear):
        return base.out_features, base.in_features
    if isinstance(base, conv1d_type()):
        return base.weight.shape[1], base.weight.shape[0]
    return None


def _is_layer_copy_of_bases(file_key: str) -> bool:
    """`<layer>.randlora_A` / `<layer>.randlora_B`, not the tuner's own `[base_model.]randlora_A`."""
    owner, _, name = file_key.rpartition(".")
    return name in ("randlora_A", "randlora_B") and owner not in ("", "base_model")


class RandLoraModel(BaseTuner):
    """Adds RandLoRA to `nn.Linear`, transformers' `Conv1D` and bitsandbytes' 8-/4-bit linear layers.

    `randlora_A` / `randlora_B` (BufferDicts on this tuner, referenced by every layer) hold each adapter's
    bases, sized for its largest targeted layer. With `save_projection=True` they are saved as
    `base_model.randlora_A` / `base_model.randlora_B` and, as peft writes them, under every layer too;
    otherwise they are re-drawn from `projection_prng_key`.

    Example:
        >>> from peftkit import RandLoraConfig, get_peft_model
        >>> model = get_peft_model(model, RandLoraConfig(r=32, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "randlora_"
    tuner_layer_cls = RandLoraLayer
    layer_classes = {nn.Linear: Linear, CONV1D: Linear}
    # bitsandbytes' layers subclass nn.Linear: they must be dispatched before the plain Linear entry
    layer_dispatchers = (dispatch_bnb,)
    # every layer references the bases of all adapters: a file holds (and a load expects) one adapter's
    # bases, written under the tuner and, as peft writes them, under that adapter's layers only
    shared_state_names = ("randlora_A", "randlora_B")

    def _check_new_adapter_config(self, config: RandLoraConfig) -> None:
        super()._check_new_adapter_config(config)
        for other in self.peft_config.values():
            if other is not config and other.projection_prng_key != config.projection_prng_key:
                raise ValueError(
                    f"RandLora PRNG initialisation key must be the same for all adapters. Got "
                    f"config.projection_prng_key={config.projection_prng_key} but previous config had "
                    f"{other.projection_prng_key}."
                )
        saves = sorted({c.save_projection for c in self.peft_config.values()})
        if len(saves) > 1:
            raise ValueError(
                "RandLora projection weights must be saved for all adapters or none, but got multiple different "
                f"values: {saves}"
            )

    def _pre_injection_hook(
        self, model: nn.Module, config: RandLoraConfig, adapter_name: str, matched: list[str]
    ) -> None:
        """Draw this adapter's bases, sized for its largest targeted layer, in the base weight's dtype."""
        modules = [model.get_submodule(key) for key in matched]
        shapes = [s for s in map(_out_in, modules) if s is not None]
        if not shapes:
            raise ValueError(
                "No layers types compatible with RandLora were found. Please check `peft_config.target_modules`: "
                "RandLoRA adapts `torch.nn.Linear` and `transformers.pytorch_utils.Conv1D` layers only."
            )
        largest = (max(s[0] for s in shapes), max(s[1] for s in shapes))
        basis_a, basis_b = draw_bases(config, max(largest), min(largest))
        weight = base_of(next(m for m in modules if _out_in(m) is not None)).weight
        dtype = weight.dtype if weight.dtype.is_floating_point else basis_a.dtype
        device = weight.device if weight.device.type != "meta" else basis_a.device
        if "randlora_A" not in self._modules:
            self.randlora_A = BufferDict(persistent=config.save_projection)
            self.randlora_B = BufferDict(persistent=config.save_projection)
        self.randlora_A[adapter_name] = basis_a.to(device, dtype)
        self.randlora_B[adapter_name] = basis_b.to(device, dtype)

    def _layer_kwargs(self, config: RandLoraConfig, key: str) -> dict[str, Any]:
        return {
            "randlora_A": self.randlora_A,
            "randlora_B": self.randlora_B,
            "r": config.r,
            "config": config,
            "fan_in_fan_out": config.fan_in_fan_out,
        }

    def _cast_adapter_dtype(self, adapter_name: str, layers: list[nn.Module] | None = None) -> None:
        super()._cast_adapter_dtype(adapter_name, layers)
        for bases in (self.randlora_A, self.randlora_B):
            if bases[adapter_name].dtype in _HALF:  # fp32 like the diagonals they multiply
                bases[adapter_name] = bases[adapter_name].float()

    def _tuner_state_keys(self, adapter_name: str) -> dict[str, str]:
        if not self.peft_config[adapter_name].save_projection:
            return {}
        return {f"randlora_A.{adapter_name}": "randlora_A", f"randlora_B.{adapter_name}": "randlora_B"}

    def _adapter_tensors_to_save(
        self, tensors: dict[str, torch.Tensor], adapter_name: str
    ) -> dict[str, torch.Tensor]:
        """Add peft's copy of the bases under each of the adapter's layers (peft warns of missing keys
        when a file lacks them)."""
        if not self.peft_config[adapter_name].save_projection:
            return tensors
        copies = {}
        for key in tensors:
            if key.endswith(".randlora_lambda"):
                layer = key.removesuffix("randlora_lambda")
                copies[layer + "randlora_A"] = self.randlora_A[adapter_name]
                copies[layer + "randlora_B"] = self.randlora_B[adapter_name]
        return {**tensors, **copies}

    def _adapter_tensors_from_file(
        self, tensors: dict[str, torch.Tensor], adapter_name: str
    ) -> dict[str, torch.Tensor]:
        """The layers' copies of the bases are the tuner's bases again: only those are loaded."""
        return {key: tensor for key, tensor in tensors.items() if not _is_layer_copy_of_bases(key)}

    def _drop_bases(self, adapter_name: str) -> None:
        for name in ("randlora_A", "randlora_B"):
            bases = self._modules.get(name)
            if bases is not None and adapter_name in bases:
                del bases[adapter_name]

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._drop_bases(adapter_name)

    def _remove_partial_adapter(self, model: nn.Module, adapter_name: str) -> None:
        super()._remove_partial_adapter(model, adapter_name)
        self._drop_bases(adapter_name)
