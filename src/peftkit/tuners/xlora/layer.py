"""X-LoRA's forward of one LoRA layer of the experts: the experts' outputs weighted per token.

For expert e of this layer (index l among the model's LoRA layers), with the token's scalings s[e] (after
the optional top-k selection and its softmax) and the expert's own scaling c_e:

    y = W x + b + g * sum_e c_e * B_e(A_e(dropout_e(s[e] * x)))        (g = global_scaling_weight)

Without scalings (a layer called outside a model forward) every s[e] is 1 and g is 1. The object
replaces the LoRA layer's `forward` (the layer keeps its place, names and tensors).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..lora import Conv2d as LoraConv2d
from ..lora import Embedding as LoraEmbedding
from ..lora import Linear as LoraLinear
from ..lora.layer import LoraLayer
from .config import XLoraConfig


class XLoraLayer:
    """X-LoRA's forward for the LoRA layer `target` (number `layer_number` among the swapped layers).

    `model` is the XLoraModel: it holds the scalings of the pass under way and whether X-LoRA is
    disabled. Not a module, so the model tree keeps PEFT's shape.
    """

    def __init__(self, model: nn.Module, target: LoraLayer, layer_number: int, config: XLoraConfig) -> None:
        self.model = model
        self.target = target
        self.layer_number = layer_number
        self.config = config

    @staticmethod
    def apply_scalings_to_x(x: torch.Tensor, scalings_layer: torch.Tensor, adapter: int) -> torch.Tensor:
        """`x` times the (batch, seq) scalings of expert number `adapter`."""
        return x * scalings_layer[:, :, adapter].unsqueeze(-1)

    def get_maybe_topk_scalings(self, scalings: torch.Tensor) -> torch.Tensor:
        """This layer's scalings (batch, seq, n_experts), keeping the top-k experts of each token when
        `top_k_lora` is set, and renormalising the kept ones with a softmax when `enable_softmax_topk`."""
        layer_scalings = scalings[:, :, self.layer_number, :]
        if self.config.top_k_lora is not None:
            _, top = torch.topk(layer_scalings, k=self.config.top_k_lora, dim=-1)
            kept = torch.zeros_like(layer_scalings, dtype=torch.bool).scatter_(-1, top, True)
            layer_scalings = layer_scalings * kept.to(layer_scalings.dtype)
        if self.config.enable_softmax_topk:
            kept = layer_scalings != 0
            normalised = torch.softmax(layer_scalings.masked_fill(~kept, float("-inf")), dim=-1)
            layer_scalings = normalised.masked_fill(~kept, 0.0)
        return layer_scalings

    def _expert_output(self, name: str, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        """Expert `name`'s LoRA output for `x` scaled per token by `scale` (None: unscaled)."""
        target = self.target
        lora_A, lora_B = target.lora_A[name], target.lora_B[name]
        x = x.to(lora_A.weight.dtype)
        x = x if scale is None else x * scale
        return lora_B(lora_A(target.lora_dropout[name](x))) * target.scaling[name]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError(
                "adapter_names= (a different adapter per sample) is not supported with X-LoRA: its classifier "
                "mixes the experts for every token itself."
            )
        target = self.target
        result = target.base_layer(x, *args, **kwargs)
        if self.model.disabled or target.merged:
            return result
        dtype = result.dtype
        scalings = self.model._active_scalings
        layer_scalings = None if scalings is None else self.get_maybe_topk_scalings(scalings)
        weight = 1 if scalings is None else self.config.global_scaling_weight
        for number, name in enumerate(target.active_adapters):
            if not target.has_adapter(name):
                continue
            if target.lora_variant.get(name) is not None:
                raise ValueError(
                    "X-LoRA currently does not support LoRA layers with DoRA or other LoRA variants"
                )
            scale = None if layer_scalings is None else layer_scalings[:, :, number].unsqueeze(-1)
            # rounded into the output's dtype after each expert, as PEFT adds them in place
            result = (result + self._expert_output(name, x, scale) * weight).to(dtype)
        return result


class XLoraLinearLayer(XLoraLayer):
    """X-LoRA on a LoRA Linear (or transformers' Conv1D) layer."""


class XLoraConv2dLayer(XLoraLayer):
    """X-LoRA on a LoRA Conv2d layer (the scalings multiply its input as they do a Linear's)."""


class XLoraEmbeddingLayer(XLoraLayer):
    """X-LoRA on a LoRA Embedding: the scalings weigh the rows looked up in A."""

    def _expert_output(self, name: str, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        target = self.target
        looked_up = target._embed(x, target.lora_embedding_A[name].T)
        looked_up = looked_up if scale is None else looked_up * scale
        output = (looked_up @ target.lora_embedding_B[name].T) * target.scaling[name]
        embed_scale = getattr(target.get_base_layer(), "embed_scale", None)  # scaled embeddings (Gemma 3)
        return output if embed_scale is None else output * torch.as_tensor(embed_scale).to(output.dtype)


def xlora_layer_for(
    model: nn.Module, target: nn.Module, layer_number: int, config: XLoraConfig
) -> XLoraLayer | None:
    """The X-LoRA forward of a LoRA Linear (or Conv1D), Conv2d or Embedding layer of the experts (the
    kinds PEFT mixes); None for any other module (other LoRA layer kinds keep plain LoRA, as in PEFT)."""
    if isinstance(target, LoraEmbedding):
        return XLoraEmbeddingLayer(model, target, layer_number, config)
    if isinstance(target, LoraLinear):
        return XLoraLinearLayer(model, target, layer_number, config)
    if isinstance(target, LoraConv2d):
        return XLoraConv2dLayer(model, target, layer_number, config)
    return None
