"""KaSA (Knowledge-aware Singular-value Adaptation, Wang et al., 2024; `kasa_config`).

Two changes to LoRA on a Linear layer with base weight `W` (out, in), `k = min(out, in)`:

1. When the adapter is created, `W` loses its `r` smallest singular components, for good: with
   `W = U S V^T`, the layer keeps `W' = U[:, :k-r] S[:k-r] V[:, :k-r]^T` (computed in fp32, stored in W's
   dtype). Disabling, deleting or unloading the adapter does not bring them back.
2. The update carries a learned singular-value vector `d` (`lora_diag`, r values, drawn from N(0, 1)):

       y = W' x + b + s * B diag(d) A dropout(x),     delta W = s * B diag(d) A

The paper's regularisers, `beta * sum(d^2) + gamma * (||B^T B - I||_F + ||A A^T - I||_F)` per layer, are
`kasa_regularization`; `LoraModel._get_kasa_loss()` sums them for the active adapters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...utils.other import get_pattern_key
from .variants import LoraVariant, add_adapter_container

_HALF = (torch.float16, torch.bfloat16)


class KasaVariant(LoraVariant):
    """KaSA on an `nn.Linear` layer."""

    name = "KaSA"
    config_field = "kasa_config"
    lora_conversion_refusal = (
        "KaSA's update has a diagonal between B and A, and the base weight it was trained on was truncated"
    )

    def __init__(self) -> None:
        self._truncated = False  # one truncation per layer, also when the adapter is re-created (EVA)

    def init(self, layer: Any, adapter_name: str, inference_mode: bool = False) -> None:
        r = layer.r[adapter_name]
        check_kasa_layer(layer.get_base_layer(), r, getattr(layer, "fan_in_fan_out", False))
        A = layer.lora_A[adapter_name].weight
        diag = add_adapter_container(layer, "lora_diag", nn.ParameterDict)
        # on meta (low_cpu_mem_usage) the values come from the file
        diag[adapter_name] = nn.Parameter(torch.randn(r, device=A.device, dtype=A.dtype))
        layer._finish_new_adapter(adapter_name, inference_mode)
        if not self._truncated:
            truncate_smallest_components(layer.get_base_layer(), r)
            self._truncated = True

    def delta_weight(self, layer: Any, adapter_name: str) -> torch.Tensor:
        B, diag = layer.lora_B[adapter_name].weight, layer.lora_diag[adapter_name]
        if B.dtype in _HALF and B.device.type == "cpu":  # as the plain delta: fp32 on CPU
            B, diag = B.float(), diag.float()
        return layer._delta_from_factors(adapter_name, layer.lora_A[adapter_name].weight, B * diag)

    def forward(
        self, layer: Any, adapter_name: str, x: torch.Tensor, result: torch.Tensor, base_result: torch.Tensor
    ) -> torch.Tensor:
        lora_A, lora_B = layer.lora_A[adapter_name], layer.lora_B[adapter_name]
        x = layer._cast_input_dtype(x, lora_A.weight.dtype)
        # diag(d) as an elementwise scaling of the r-dim intermediate
        after_A = lora_A(layer.lora_dropout[adapter_name](x)) * layer.lora_diag[adapter_name]
        return layer._add_adapter_output(result, lora_B(after_A) * layer.scaling[adapter_name])


def check_kasa_layer(base: nn.Module, r: int, fan_in_fan_out: bool = False) -> None:
    """Raise before anything changes when KaSA cannot adapt `base` with rank `r`."""
    if fan_in_fan_out or type(base).__name__ == "Conv1D":
        raise ValueError(
            "KaSA does not support `fan_in_fan_out=True` layers (e.g. Conv1D). Please target nn.Linear layers."
        )
    if not isinstance(base, nn.Linear):
        raise ValueError(
            f"KaSA (kasa_config) adapts nn.Linear layers only, not {type(base).__name__}; leave such layers out of "
            "target_modules."
        )
    if not base.weight.dtype.is_floating_point or base.weight.is_meta:
        raise ValueError(
            f"KaSA rewrites the base weight (it drops its {r} smallest singular components), which needs the weight "
            f"as numbers, but it is {'on the meta device' if base.weight.is_meta else base.weight.dtype} (quantized). "
            "Add the KaSA adapter to the unquantized model."
        )
    k = min(base.weight.shape)
    if r >= k:
        raise ValueError(
            f"KaSA requires `r` ({r}) to be smaller than min(in_features, out_features) ({k}) so that at least one "
            "singular component of the base weight is preserved after truncation."
        )


def check_kasa_targets(model: nn.Module, config: Any, matched: list[str]) -> None:
    """Check every module KaSA is about to adapt, so that no base weight is truncated when one would fail."""
    for key in matched:
        module = model.get_submodule(key)
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), key), config.r)
        check_kasa_layer(base, r)


@torch.no_grad()
def truncate_smallest_components(base: nn.Module, r: int) -> None:
    """Replace `base.weight` (out, in) by its rank-(k - r) SVD approximation (fp32 SVD, stored in its dtype)."""
    weight = base.weight
    U, S, Vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    keep = S.shape[0] - r
    weight.data = ((U[:, :keep] * S[:keep]) @ Vh[:keep]).to(weight.dtype)


def kasa_regularization(layer: Any, adapter_name: str, beta: float, gamma: float) -> torch.Tensor:
    """`beta * sum(d^2) + gamma * (||B^T B - I||_F + ||A A^T - I||_F)` of one layer's adapter, in fp32."""
    diag = layer.lora_diag[adapter_name].float()
    A = layer.lora_A[adapter_name].weight.float()
    B = layer.lora_B[adapter_name].weight.float()
    eye = torch.eye(diag.shape[0], device=diag.device)
    orthogonality = torch.linalg.norm(B.T @ B - eye) + torch.linalg.norm(A @ A.T - eye)
    return beta * diag.pow(2).sum() + gamma * orthogonality
