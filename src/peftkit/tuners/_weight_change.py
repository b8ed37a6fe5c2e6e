"""What one adapter changes in the weight of one base layer: what `convert_to_lora` factorises.

Any adapter whose effect on a layer is a change of that layer's weight can be written as a LoRA of full
rank, and approximated by a LoRA of lower rank (the truncated SVD of the change). The change is
`W' - W`, with `W'` the weight the layer would hold with the adapter merged. For an additive method
(`W' = W + delta`) that is `get_delta_weight` itself, which is what peft factorises; for any other
method (DoRA's renormalisation, OFT's rotations, IA3's scaling) it is computed from the merge, so those
adapters convert too.

A layer cannot be converted when its base layer is not a kind LoRA adapts (`nn.Linear`, transformers'
`Conv1D`, `nn.Embedding`, an ungrouped `nn.Conv1d/2d/3d`), when the adapter cannot be merged, when it also
changes the bias (a LoRA adapter changes the weight only), or when its method declares that its effect
depends on the input (`BaseTunerLayer._lora_conversion_refusal`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ._linear_kind import conv1d_type

if TYPE_CHECKING:
    from ._tuner_layer import BaseTunerLayer

_CONVERTIBLE_BASES = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def conversion_refusal(layer: BaseTunerLayer, adapter_name: str) -> str | None:
    """Why adapter `adapter_name` of `layer` cannot be written as a LoRA adapter, or None when it can."""
    refusal = layer._lora_conversion_refusal(adapter_name)
    if refusal is not None:
        return refusal
    base = layer.get_base_layer()
    if not isinstance(base, (*_CONVERTIBLE_BASES, conv1d_type())):
        return f"its base layer is a {type(base).__name__}; LoRA adapts Linear, Conv1D, Embedding and ConvNd layers"
    if getattr(base, "groups", 1) > 1:
        return "its base layer is a grouped convolution (groups > 1), which LoRA cannot adapt as one weight"
    if not layer.has_adapter(adapter_name):
        return None  # nothing to convert here; the caller skips the layer
    if not layer._can_merge():
        return f"{type(layer).__name__} cannot be merged, so its adapter is not a weight change"
    try:
        layer._check_mergeable()
        bias_changes = layer._merged_bias(adapter_name) is not None
    except (NotImplementedError, RuntimeError, ValueError) as refusal:
        return str(refusal)
    if bias_changes:
        return "the adapter also changes the layer's bias, which a LoRA adapter cannot hold"
    if adapter_name in layer.merged_adapters:  # the base weight holds the change already
        return "the adapter is merged into the base weight; call unmerge_adapter() first"
    return None


@torch.no_grad()
def weight_change(layer: BaseTunerLayer, adapter_name: str) -> torch.Tensor:
    """`W' - W` of adapter `adapter_name` in the base weight's layout (`get_delta_weight` for additive
    methods, in its dtype; otherwise from the merge, in fp32)."""
    if layer._merges_additively(adapter_name):
        return layer.get_delta_weight(adapter_name).detach()
    weight = layer._dense_base_weight().float()
    return layer._merged_weight(adapter_name, weight).float() - weight
