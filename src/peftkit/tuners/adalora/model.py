"""AdaLoraModel: the AdaLoRA tuner: SVD-shaped layers, rank allocation, the orthogonality regulariser,
and pruned ranks on save/load."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...config import PeftConfig
from .._dispatch import CONV1D
from ..lora.model import LoraModel
from .allocator import RankAllocator, find_mask
from .config import AdaLoraConfig
from .layer import AdaLoraLayer, SVDConv2d, SVDLinear


def _module_of(rank_pattern_key: str) -> str:
    return rank_pattern_key.split(".lora_E")[0]


class AdaLoraModel(LoraModel):
    """Adds AdaLoRA layers to `nn.Linear`, transformers' `Conv1D` and `nn.Conv2d`.

    In the training loop, after `optimizer.step()` and before `zero_grad()`:
        >>> model.base_model.update_and_allocate(global_step)

    Only one adapter may be trainable (the others in inference mode). Saving writes the allocated
    `rank_pattern` into the config and only the kept triplets into the weights file; loading such a file
    creates each layer with its pruned rank.
    """

    prefix = "lora_"
    tuner_layer_cls = AdaLoraLayer
    layer_classes = {nn.Linear: SVDLinear, CONV1D: SVDLinear, nn.Conv2d: SVDConv2d}
    layer_dispatchers = ()  # LoRA's quantized layers are not AdaLoRA layers: quantized bases are adapted as Linear
    quantization_backends = ("bitsandbytes",)

    @property
    def trainable_adapter_name(self) -> str | None:
        """The adapter that trains (and gets ranks allocated): the one not in inference mode, if any."""
        names = [name for name, config in self.peft_config.items() if not config.inference_mode]
        return names[0] if names else None

    @property
    def rankallocator(self) -> RankAllocator:
        """The allocator of the trainable adapter (created on first use)."""
        name = self.trainable_adapter_name
        if name is None:
            raise ValueError(
                "AdaLoRA rank allocation needs a trainable adapter, but every adapter is in inference mode; load the "
                "adapter with is_trainable=True."
            )
        allocator = self.__dict__.get("_rank_allocator")
        if allocator is None or allocator.adapter_name != name:
            allocator = RankAllocator(self.model, self.peft_config[name], name)
            self.__dict__["_rank_allocator"] = allocator
        return allocator

    # ----- adapter creation -----
    def _check_new_adapter_config(self, config: AdaLoraConfig) -> None:
        super()._check_new_adapter_config(config)
        if sum(not c.inference_mode for c in self.peft_config.values()) > 1:
            raise ValueError(
                f"{type(self).__name__} supports only 1 trainable adapter. When using multiple adapters, set "
                "inference_mode to True for all adapters except the one you want to train."
            )

    def _layer_kwargs(self, config: AdaLoraConfig, key: str) -> dict[str, Any]:
        mask = find_mask(config.rank_pattern, key)
        r = config.init_r if mask is None else sum(bool(m) for m in mask)
        return {
            "r": r,
            "ranknum": config.init_r if r else 0,  # the scale of the kept triplets stays that of init_r
            "lora_alpha": config.lora_alpha,
            "lora_dropout": config.lora_dropout,
            "fan_in_fan_out": config.fan_in_fan_out,
            "init_lora_weights": config.init_lora_weights,
        }

    def add_weighted_adapter(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{type(self).__name__} does not support add_weighted_adapter method.")

    # ----- training -----
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The model's outputs; a loss gets `orth_reg_weight * R(A, B)` of the trainable adapter added."""
        outputs = self.model.forward(*args, **kwargs)
        loss = getattr(outputs, "loss", None)
        name = self.trainable_adapter_name
        if isinstance(loss, torch.Tensor) and name is not None:
            weight = self.peft_config[name].orth_reg_weight
            if weight > 0:
                outputs.loss = loss + weight * self.orthogonal_regularization(name)
        return outputs

    def orthogonal_regularization(self, adapter_name: str) -> torch.Tensor:
        """`mean over layers and over {A A^T, B^T B}` of `||M - I||_F` (AdaLoRA's R(P, Q))."""
        terms = []
        for layer in self._tuner_layers(self.model):
            if isinstance(layer, AdaLoraLayer) and adapter_name in layer.lora_A:
                lora_A, lora_B = layer.lora_A[adapter_name], layer.lora_B[adapter_name]
                for gram in (lora_A @ lora_A.T, lora_B.T @ lora_B):
                    eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
                    terms.append(torch.linalg.matrix_norm(gram - eye))
        return torch.stack(terms).mean()

    def update_and_allocate(self, global_step: int) -> None:
        """Allocate ranks after the optimizer step `global_step` (see AdaLoraConfig for the schedule)."""
        allocator = self.rankallocator
        config = self.peft_config[allocator.adapter_name]
        final = config.total_step - config.tfinal
        if global_step < final:
            _, rank_pattern = allocator.update_and_allocate(self.model, global_step)
            if rank_pattern:
                config.rank_pattern = rank_pattern
        elif global_step == final:
            _, rank_pattern = allocator.update_and_allocate(self.model, global_step, force_mask=True)
            config.rank_pattern = rank_pattern
            allocator.reset_ipt()
        else:
            allocator.mask_using_rank_pattern(self.model, config.rank_pattern)

    # ----- pruned ranks -----
    def resize_modules_by_rank_pattern(self, rank_pattern: dict, adapter_name: str) -> None:
        """Drop, in every layer, the triplets `rank_pattern` does not keep (a layer already at the pruned rank
        is left alone); `ranknum` keeps the scale."""
        for key, mask in rank_pattern.items():
            layer = self.model.get_submodule(_module_of(key))
            if layer.r[adapter_name] != len(mask):
                continue
            keep = torch.tensor(mask, dtype=torch.bool, device=layer.lora_E[adapter_name].device)
            with torch.no_grad():
                for attr, dim in (("lora_A", 0), ("lora_E", 0), ("lora_B", 1)):
                    param = getattr(layer, attr)[adapter_name]
                    pruned = nn.Parameter(param.index_select(dim, keep.nonzero().flatten()).clone())
                    getattr(layer, attr)[adapter_name] = pruned.requires_grad_(param.requires_grad)
            layer.r[adapter_name] = int(keep.sum())

    def resize_state_dict_by_rank_pattern(
        self, rank_pattern: dict, state_dict: dict[str, torch.Tensor], adapter_name: str
    ) -> dict[str, torch.Tensor]:
        """Keep only the allocated triplets in `state_dict` (file keys); tensors already pruned stay."""
        for key, mask in rank_pattern.items():
            module = _module_of(key)
            keep = torch.tensor(mask, dtype=torch.bool).nonzero().flatten()
            for attr, dim in (("lora_A", 0), ("lora_E", 0), ("lora_B", 1)):
                target = f"{module}.{attr}"
                for name in [k for k in state_dict if k == target or k.endswith("." + target)]:
                    tensor = state_dict[name]
                    if tensor.shape[dim] == len(mask):
                        state_dict[name] = tensor.index_select(dim, keep.to(tensor.device))
        return state_dict

    def _adapter_tensors_to_save(
        self, tensors: dict[str, torch.Tensor], adapter_name: str
    ) -> dict[str, torch.Tensor]:
        rank_pattern = self.peft_config[adapter_name].rank_pattern
        return (
            self.resize_state_dict_by_rank_pattern(rank_pattern, tensors, adapter_name)
            if rank_pattern
            else tensors
        )

    def _adapter_config_to_save(self, config: PeftConfig, adapter_name: str) -> PeftConfig:
        """The saved rank_pattern names layers without the adapter name (`<module>.lora_E`), as peft's."""
        if config.rank_pattern:
            suffix = f".lora_E.{adapter_name}"
            config.rank_pattern = {
                (key[: -len(adapter_name) - 1] if key.endswith(suffix) else key): list(mask)
                for key, mask in config.rank_pattern.items()
            }
        return config
