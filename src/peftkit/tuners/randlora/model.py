"""RandLoraModel: the RandLoRA tuner. It owns the shared random bases (one pair per adapter)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._dispatch import CONV1D
from .._shared_projections import SharedProjectionTuner
from .bases import draw_bases
from .bnb import dispatch_bnb
from .config import RandLoraConfig
from .layer import Linear, RandLoraLayer


def _is_layer_copy_of_bases(file_key: str) -> bool:
    """`<layer>.randlora_A` / `<layer>.randlora_B`, not the tuner's own `[base_model.]randlora_A`."""
    owner, _, name = file_key.rpartition(".")
    return name in ("randlora_A", "randlora_B") and owner not in ("", "base_model")


class RandLoraModel(SharedProjectionTuner):
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
    projection_names = ("randlora_A", "randlora_B")
    method_label = "RandLora"  # as peft's messages spell it

    def _draw_projections(
        self, config: RandLoraConfig, out_features: int, in_features: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return draw_bases(config, max(out_features, in_features), min(out_features, in_features))

    def _layer_kwargs(self, config: RandLoraConfig, key: str) -> dict[str, Any]:
        return {
            "randlora_A": self.randlora_A,
            "randlora_B": self.randlora_B,
            "r": config.r,
            "config": config,
            "fan_in_fan_out": config.fan_in_fan_out,
        }

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
