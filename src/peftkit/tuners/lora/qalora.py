"""QA-LoRA (Xu et al., 2023; `use_qalora=True`): LoRA's A reads the input average-pooled in groups.

With `g = qalora_group_size` and `P = in_features / g` groups, A has shape (r, P) and sees

    pooled(x)_p = P * mean(x[p*g : (p+1)*g]),        y = base(x) + s * B A pooled(x)

(PEFT's scaling of the pooled features, by the number of groups). The groups match a group-wise
quantization of the base weight (GPTQ's, of size g along the input), which is what lets the paper merge
the adapter into the quantized weight's zero points. As a weight change it is a plain (out, in) matrix,
each input column getting its group's column of `B A`:

    delta W[:, j] = s * (P / g) * (B A)[:, j // g]

so merging into a floating-point (or bitsandbytes) base is exact (PEFT's GPTQ layers cannot merge).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .layer import Linear
from .variants import LoraVariant


class QaLoraVariant(LoraVariant):
    """QA-LoRA on a Linear layer (plain, transformers' Conv1D or quantized)."""

    name = "QA-LoRA"
    config_field = "use_qalora"
    lora_conversion_refusal = (
        "QA-LoRA's A reads group-pooled input features, not the input: it is no weight change of the layer"
    )

    def __init__(self, group_size: int) -> None:
        self.group_size = group_size

    def init(self, layer: Any, adapter_name: str, inference_mode: bool = False) -> None:
        if not isinstance(layer, Linear) or type(layer).__name__ == "ParamWrapper":
            raise ValueError(
                f"use_qalora=True applies to linear layers only, not to {type(layer.get_base_layer()).__name__}; "
                "leave such layers out of target_modules."
            )
        if layer.in_features % self.group_size:
            raise ValueError(
                f"`use_qalora=True` requires `module.in_features` ({layer.in_features}) to be divisible by "
                f"'qalora_group_size' ({self.group_size})."
            )
        old = layer.lora_A[adapter_name].weight
        pooled = nn.Linear(
            layer.in_features // self.group_size, old.shape[0], bias=False, device=old.device, dtype=old.dtype
        )
        # nn.Linear's own initialisation (kaiming-uniform over the pooled fan-in), as PEFT's QA-LoRA A
        layer.lora_A[adapter_name] = pooled
        layer._finish_new_adapter(adapter_name, inference_mode)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        groups = x.shape[-1] // self.group_size
        return x.unflatten(-1, (groups, self.group_size)).mean(dim=-1) * groups

    def forward(
        self, layer: Any, adapter_name: str, x: torch.Tensor, result: torch.Tensor, base_result: torch.Tensor
    ) -> torch.Tensor:
        lora_A, lora_B = layer.lora_A[adapter_name], layer.lora_B[adapter_name]
        x = layer.lora_dropout[adapter_name](layer._cast_input_dtype(x, lora_A.weight.dtype))
        output = lora_B(lora_A(self._pooled(x))) * layer.scaling[adapter_name]
        return layer._add_adapter_output(result, output)

    def delta_weight(self, layer: Any, adapter_name: str) -> torch.Tensor:
        A = layer.lora_A[adapter_name].weight
        groups = A.shape[1]
        # each pooled column spread over its group, times P / g (the mean's 1/g and PEFT's factor P)
        expanded = A.repeat_interleave(self.group_size, dim=1) * (groups / self.group_size)
        return layer._delta_from_factors(adapter_name, expanded, layer.lora_B[adapter_name].weight)


def check_qalora_config(config: Any) -> None:
    """Reject what QA-LoRA does not define, before any layer is touched."""
    if config.init_lora_weights not in (True, False, "gaussian"):
        # PiSSA, OLoRA, CorDA, LoftQ, EVA, ... compute a full-width A (some also rewrite the base weight to
        # match it), which the pooled A then replaces: the model would silently not be what it claims
        raise ValueError(
            f"use_qalora=True does not work with init_lora_weights={config.init_lora_weights!r}: that initialisation "
            "computes a full-width A, and QA-LoRA's A reads pooled features. Use init_lora_weights=True."
        )
    if config.lora_bias:
        raise ValueError(
            "use_qalora=True does not work with lora_bias=True (PEFT's QA-LoRA forward leaves lora_B's bias out); "
            "pass lora_bias=False."
        )
