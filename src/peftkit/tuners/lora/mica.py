"""MiCA (Minor Component Adaptation; `init_lora_weights="mica"`): LoRA in the base weight's least used directions.

With `W = U S V^T` the base weight (output channels first) and its singular values in decreasing order,

    B = U[:, -r:]  (the left singular vectors of the r smallest singular values, frozen),   A = 0

so the adapter starts as a no-op and training moves only A: `delta W = s B A` writes into the subspace the
pretrained weight uses least. Forward and merging are plain LoRA's. On an Embedding the weight read
output-first is `E^T` (embedding dim x vocabulary), as for its delta weight.
"""

from __future__ import annotations

from typing import Any

import torch

from .inits import register_init_scheme
from .layer import Embedding, Linear
from .variants import LoraVariant


class MicaVariant(LoraVariant):
    """MiCA on a Linear (plain or quantized: the SVD reads the dequantized weight) or an Embedding."""

    name = "MiCA"
    config_field = "init_lora_weights"

    def init(self, layer: Any, adapter_name: str, inference_mode: bool = False) -> None:
        if not isinstance(layer, (Linear, Embedding)) or type(layer).__name__ == "ParamWrapper":
            raise ValueError(
                f"init_lora_weights='mica' applies to linear and embedding layers only, not to "
                f"{type(layer.get_base_layer()).__name__}; leave such layers out of target_modules."
            )
        A, B, frozen = _factors(layer, adapter_name)
        if not B.is_meta:  # on meta (low_cpu_mem_usage) the factors come from a file
            A_value, B_value = mica_factors(
                layer._weight_out_in(layer._dense_base_weight()), layer.r[adapter_name]
            )
            with torch.no_grad():
                A.copy_(A_value.to(A.dtype))
                B.copy_(B_value.to(B.dtype))
        layer.freeze_adapter_weights(adapter_name, frozen)


def mica_factors(weight_out_in: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of MiCA for an (out, in) weight: A = 0 (r, in), B = the minor left singular vectors (out, r)."""
    if not weight_out_in.dtype.is_floating_point:
        raise TypeError(
            f"init_lora_weights='mica' needs the layer's weight as numbers, but it is {weight_out_in.dtype}."
        )
    if r > min(weight_out_in.shape):
        raise ValueError(
            f"MiCA requires `r` <= min(in_features, out_features) but got r={r} for a layer with weight shape "
            f"{tuple(weight_out_in.shape)} (max usable r is {min(weight_out_in.shape)})."
        )
    U, _, _ = torch.linalg.svd(weight_out_in.detach().float(), full_matrices=False)
    B = U[:, -r:]
    return torch.zeros(r, weight_out_in.shape[1], device=B.device), B


def _factors(layer: Any, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(A, B, the name of B's container) of a Linear or an Embedding adapter."""
    if adapter_name in layer.lora_A:
        return layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight, "lora_B"
    return layer.lora_embedding_A[adapter_name], layer.lora_embedding_B[adapter_name], "lora_embedding_B"


def _factors_set_by_the_variant(layer: Any, adapter_name: str) -> None:
    """`init_lora_weights="mica"` as an init scheme: nothing, `MicaVariant.init` (attached for this init,
    on Linear and Embedding layers alike) sets the factors right after."""


register_init_scheme("mica", _factors_set_by_the_variant)
