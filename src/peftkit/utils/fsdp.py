"""FSDP (wrapper API) auto-wrap policy for adapter models: trainable leaf modules (LoRA's A and B, prompt
encoders) get their own FSDP unit, so that frozen and trainable parameters are never flattened together,
and the model's transformer blocks are wrapped as usual.

FSDP2 (`torch.distributed.fsdp.fully_shard`) needs no policy: shard each block, then the model.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from torch import nn

__all__ = ["fsdp_auto_wrap_policy"]


def _transformer_layer_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The block classes to wrap: `FSDP_TRANSFORMER_CLS_TO_WRAP` (accelerate's variable, comma-separated
    class names) or the model's `_no_split_modules`."""
    names = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not wanted:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        wanted = list(getattr(base, "_no_split_modules", None) or [])
    found = {type(m) for m in model.modules() if type(m).__name__ in wanted}
    missing = set(wanted) - {cls.__name__ for cls in found}
    if missing:
        raise ValueError(
            f"FSDP_TRANSFORMER_CLS_TO_WRAP names {sorted(missing)}, which the model does not contain; set it to "
            "the class names of the model's transformer blocks."
        )
    return found


def _has_trainable_weight(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return not list(module.children()) and isinstance(weight, nn.Parameter) and weight.requires_grad


def fsdp_auto_wrap_policy(model: nn.Module) -> Callable:
    """An FSDP `auto_wrap_policy` for `model` (a PeftModel or a model carrying adapters)."""
    from torch.distributed.fsdp.wrap import _or_policy, lambda_auto_wrap_policy, transformer_auto_wrap_policy

    layer_classes = _transformer_layer_classes(model)
    # prompt-learning encoders hold their trainable tensors directly
    for module in model.modules():
        if type(module).__name__ in ("CartridgeEncoder", "PrefixEncoder", "PromptEncoder", "PromptEmbedding"):
            layer_classes.add(type(module))
    transformer_policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=layer_classes)
    trainable_leaf_policy = functools.partial(lambda_auto_wrap_policy, lambda_fn=_has_trainable_weight)
    return functools.partial(_or_policy, policies=[trainable_leaf_policy, transformer_policy])
