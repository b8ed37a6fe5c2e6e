"""LoRA+ (Hayou et al., 2024): train `lora_B` with a learning rate `loraplus_lr_ratio` times that of `lora_A`.

The paper shows that for wide layers the two factors need different step sizes for efficient feature
learning (B's update should be about `ratio` times larger, ratio ~ 2^4). The optimizer gets four
parameter groups, in this order:

1. "A" and all other trainable tensors (e.g. `modules_to_save` copies): `lr`, `loraplus_weight_decay`
2. LoRA factors of embedding layers: `loraplus_lr_embedding` (default 1e-6), `loraplus_weight_decay`
3. `lora_B` factors and the other 1-d tensors that take weight decay (DoRA magnitudes): `lr * ratio`,
   `loraplus_weight_decay`
4. the remaining 1-d tensors (biases, layer-norm weights): `lr * ratio`, no weight decay
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..tuners.lora.layer import Embedding as LoraEmbedding

# Optimizers of bitsandbytes that keep 8-bit state: embeddings keep 32-bit state (as transformers' Trainer)
_BNB_8BIT_OPTIMIZERS = ("Adam8bit", "AdamW8bit", "PagedAdam8bit", "PagedAdamW8bit")


def _layernorm_types() -> tuple[type, ...]:
    try:
        from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS

        return tuple(ALL_LAYERNORM_LAYERS)
    except ImportError:  # older/newer transformers without the list
        return (nn.LayerNorm,)


def _params_outside(module: nn.Module, forbidden: tuple[type, ...], prefix: str = "") -> list[str]:
    """Names of the parameters not inside a module of the `forbidden` types."""
    names = [prefix + name for name in module._parameters if module._parameters[name] is not None]
    for child_name, child in module.named_children():
        if not isinstance(child, forbidden):
            names += _params_outside(child, forbidden, f"{prefix}{child_name}.")
    return names


def decay_parameter_names(model: nn.Module) -> set[str]:
    """Parameters that take weight decay: not a bias, not inside a layer norm (transformers' rule)."""
    return {name for name in _params_outside(model, _layernorm_types()) if "bias" not in name}


def create_loraplus_optimizer(
    model: nn.Module,
    optimizer_cls: type[torch.optim.Optimizer],
    *,
    lr: float,
    loraplus_lr_ratio: float,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """An `optimizer_cls` over the trainable parameters of `model` with LoRA+ learning rates.

    Args:
        model: a PeftModel (or any model) with LoRA adapters.
        optimizer_cls: e.g. `torch.optim.AdamW`.
        lr: the learning rate of `lora_A` (and of every other trainable tensor).
        loraplus_lr_ratio: `lora_B`'s learning rate is `lr * loraplus_lr_ratio` (the paper suggests 2^4).
        kwargs: `loraplus_weight_decay` (default 0.0) and `loraplus_lr_embedding` (default 1e-6) are read
            here; everything else goes to `optimizer_cls`.
    """
    weight_decay = kwargs.pop("loraplus_weight_decay", 0.0)
    lr_embedding = kwargs.pop("loraplus_lr_embedding", 1e-6)
    decay = decay_parameter_names(model)
    embedding_params = {
        id(p) for module in model.modules() if isinstance(module, LoraEmbedding) for p in _lora_params(module)
    }
    groups: dict[str, list[nn.Parameter]] = {"A": [], "embedding": [], "B": [], "B_no_decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in embedding_params:
            groups["embedding"].append(param)
        elif "lora_B" in name or param.ndim == 1:
            groups["B" if name in decay else "B_no_decay"].append(param)
        else:
            groups["A"].append(param)
    param_groups = [
        {"params": groups["A"], "weight_decay": weight_decay, "lr": lr},
        {"params": groups["embedding"], "weight_decay": weight_decay, "lr": lr_embedding},
        {"params": groups["B"], "weight_decay": weight_decay, "lr": lr * loraplus_lr_ratio},
        {"params": groups["B_no_decay"], "weight_decay": 0.0, "lr": lr * loraplus_lr_ratio},
    ]
    optimizer = optimizer_cls(param_groups, lr=lr, **kwargs)
    if optimizer_cls.__name__ in _BNB_8BIT_OPTIMIZERS:
        _keep_embeddings_32bit(model)
    return optimizer


def _lora_params(layer: nn.Module) -> list[torch.Tensor]:
    return [p for attr in ("lora_embedding_A", "lora_embedding_B") for p in getattr(layer, attr).values()]


def _keep_embeddings_32bit(model: nn.Module) -> None:
    """bitsandbytes 8-bit optimizers are unstable on embeddings: give them 32-bit optimizer state."""
    import bitsandbytes

    manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            manager.register_module_override(module, "weight", {"optim_bits": 32})
