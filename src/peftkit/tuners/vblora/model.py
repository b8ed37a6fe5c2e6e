"""VBLoRAModel: the VB-LoRA tuner. It owns the vector banks (one per adapter, trained)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...config import PeftConfig
from .._dispatch import CONV1D
from ..tuners_utils import BaseTuner
from .config import VBLoRAConfig
from .layer import Linear, VBLoRALayer
from .topk_files import compress_logits, expand_logits


def draw_bank(config: VBLoRAConfig) -> torch.Tensor:
    """A bank (num_vectors x vector_length) ~ U(-init_vector_bank_bound, init_vector_bank_bound), drawn
    from torch's global generator."""
    bank = torch.zeros(config.num_vectors, config.vector_length)
    bound = config.init_vector_bank_bound
    return torch.nn.init.uniform_(bank, -bound, bound)


class VBLoRAModel(BaseTuner):
    """Adds VB-LoRA to `nn.Linear` and transformers' `Conv1D` layers.

    `vblora_vector_bank` (a ParameterDict on this tuner, referenced by every layer) holds each adapter's
    bank, saved once as `base_model.vblora_vector_bank`; with `save_only_topk_weights=True` the files hold
    the logits' top-k indices and weights instead of the logits (see `topk_files`).

    Example:
        >>> from peftkit import VBLoRAConfig, get_peft_model
        >>> config = VBLoRAConfig(r=4, num_vectors=60, vector_length=256, target_modules=["q_proj", "v_proj"])
        >>> model = get_peft_model(model, config)
    """

    prefix = "vblora_"
    uses_shared_state = True  # its layers need the tuner's shared tensors (PEFT sets it too)
    tuner_layer_cls = VBLoRALayer
    layer_classes = {nn.Linear: Linear, CONV1D: Linear}
    shared_state_names = ("vblora_vector_bank",)

    def _pre_injection_hook(
        self, model: nn.Module, config: VBLoRAConfig, adapter_name: str, matched: list[str]
    ) -> None:
        if "vblora_vector_bank" not in self._modules:
            self.vblora_vector_bank = nn.ParameterDict({})

    def _create_and_replace(
        self,
        config: PeftConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
    ) -> None:
        # peft draws the bank anew before each layer and keeps the last draw; drawing it the same way keeps
        # a seeded model's bank and logits equal to peft's, number for number
        self.vblora_vector_bank[adapter_name] = draw_bank(config)
        super()._create_and_replace(config, adapter_name, target, target_name, parent, current_key)

    def _layer_kwargs(self, config: VBLoRAConfig, key: str) -> dict[str, Any]:
        return {
            "vblora_vector_bank": self.vblora_vector_bank,
            "r": config.r,
            "config": config,
            "fan_in_fan_out": config.fan_in_fan_out,
        }

    def _tuner_state_keys(self, adapter_name: str) -> dict[str, str]:
        return {f"vblora_vector_bank.{adapter_name}": "vblora_vector_bank"}

    def _adapter_tensors_to_save(
        self, tensors: dict[str, torch.Tensor], adapter_name: str
    ) -> dict[str, torch.Tensor]:
        config = self.peft_config[adapter_name]
        if not config.save_only_topk_weights:
            return tensors
        return compress_logits(tensors, config.topk, config.num_vectors)

    def _adapter_tensors_from_file(
        self, tensors: dict[str, torch.Tensor], adapter_name: str
    ) -> dict[str, torch.Tensor]:
        return expand_logits(tensors, self.peft_config[adapter_name].num_vectors)

    def _drop_bank(self, adapter_name: str) -> None:
        banks = self._modules.get("vblora_vector_bank")
        if banks is not None and adapter_name in banks:
            del banks[adapter_name]

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._drop_bank(adapter_name)

    def _remove_partial_adapter(self, model: nn.Module, adapter_name: str) -> None:
        super()._remove_partial_adapter(model, adapter_name)
        self._drop_bank(adapter_name)

    def get_nb_savable_parameters(self, adapter: str = "default") -> tuple[int, int]:
        """(VB-LoRA numbers a file holds, in fp32 equivalents; other trainable numbers saved with them).

        With `save_only_topk_weights`, each piece's N logits count as k - 1 weights plus k indices, an
        index counting as a fraction of an fp32 number by its integer size (as peft counts)."""
        logits = bank = other = 0
        for name, param in self.named_parameters():
            if "vblora_logits" in name:
                logits += param.numel()
            elif "vblora_vector_bank" in name:
                bank += param.numel()
            elif param.requires_grad:
                other += param.numel()
        config = self.peft_config[adapter]
        if not config.save_only_topk_weights:
            return bank + logits, other
        pieces = logits / config.num_vectors
        index_size = next(
            size
            for bound, size in ((2**8, 0.25), (2**15, 0.5), (2**31, 1), (float("inf"), 2))
            if config.num_vectors < bound
        )
        return int(bank + pieces * (config.topk - 1) + pieces * config.topk * index_size), other

    def print_savable_parameters(self) -> None:
        """Print how many numbers `save_pretrained` writes for VB-LoRA (fp32 equivalents) and in all."""
        vblora, other = self.get_nb_savable_parameters()
        print(
            f"VB-LoRA params to-be-saved (float32-equivalent): {vblora:,d} "
            f"|| total params to-be-saved: {(vblora + other):,d}"
        )
