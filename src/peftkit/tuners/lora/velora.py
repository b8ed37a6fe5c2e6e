"""VeLoRA (Miles et al., 2024; `velora_config`): LoRA's A keeps a compressed input for its backward pass.

The forward is plain LoRA's. In training, A's input `x` (in features) is split into `G = num_groups`
sub-tokens of `d = ceil(in / G)` features (zero-padded), and only each sub-token's projection on a unit
vector `v` (d values, `lora_velora_embed`) is kept: G numbers per token instead of `in`. The backward
rebuilds the input as `scale * c_g v` per sub-token and computes A's gradient from it; the gradient to
the input is exact:

    c_g = <x_g, v>,    x~ = scale * [c_1 v, ..., c_G v][:in],    dL/dA = g^T x~,    dL/dx = g A

`v` is the batch's mean sub-token, normalised (`init_type="batch_average"`: at every training step;
`"batch_average_once"`: at the first one), or a random unit vector fixed at creation (`"random"`). It is
saved with the adapter and never trained.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .._buffer_dict import BufferDict
from .layer import Linear
from .sub_configs import VeloraConfig
from .variants import LoraVariant, add_adapter_container


def sub_tokens(x: torch.Tensor, num_groups: int) -> torch.Tensor:
    """`x` (..., in) as (tokens, num_groups, ceil(in / num_groups)), zero-padded at the end."""
    width = -(-x.shape[-1] // num_groups)
    padded = F.pad(x, (0, num_groups * width - x.shape[-1]))
    return padded.reshape(-1, num_groups, width)


def unit_vector(v: torch.Tensor) -> torch.Tensor:
    """`v / ||v||` in fp32; a zero vector gives the normalised all-ones vector."""
    v = v.float()
    norm = torch.linalg.vector_norm(v)
    if norm == 0:
        v = torch.ones_like(v)
        norm = torch.linalg.vector_norm(v)
    return v / norm


class _CompressedLinear(torch.autograd.Function):
    """`x @ W^T` that saves `<x_g, v>` per sub-token instead of `x` (the backward of VeLoRA's A)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, v: torch.Tensor, groups: int, scale: float):
        ctx.input_shape, ctx.input_dtype, ctx.groups, ctx.scale = x.shape, x.dtype, groups, scale
        ctx.save_for_backward(sub_tokens(x, groups) @ v.to(x.dtype), weight, v)
        return F.linear(x, weight)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        compressed, weight, v = ctx.saved_tensors
        dtype = grad_out.dtype
        grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_2d @ weight.to(dtype)).reshape(ctx.input_shape).to(ctx.input_dtype)
        if ctx.needs_input_grad[1]:
            rebuilt = (compressed.to(dtype).unsqueeze(-1) * v.to(dtype)).flatten(1)[:, : ctx.input_shape[-1]]
            grad_w = (grad_2d.T @ (rebuilt * ctx.scale)).to(weight.dtype)
        return grad_x, grad_w, None, None, None


class VeloraVariant(LoraVariant):
    """VeLoRA on a Linear layer (plain, transformers' Conv1D or quantized)."""

    name = "VeLoRA"
    config_field = "velora_config"

    def __init__(self, config: VeloraConfig) -> None:
        self.config = config
        self.projection_set = False  # "batch_average_once": whether a training step has set v yet

    def init(self, layer: Any, adapter_name: str, inference_mode: bool = False) -> None:
        if not isinstance(layer, Linear) or type(layer).__name__ == "ParamWrapper":
            raise ValueError(
                f"VeLoRA (velora_config) applies to linear layers only, not to {type(layer.get_base_layer()).__name__}; "
                "leave such layers out of target_modules."
            )
        A = layer.lora_A[adapter_name].weight
        base = layer.get_base_layer().weight
        # PEFT keeps v in the base weight's dtype (a quantized base: the adapter's)
        dtype = base.dtype if base.dtype.is_floating_point else A.dtype
        width = -(-layer.in_features // self.config.num_groups)
        if self.config.init_type == "random":
            v = unit_vector(torch.randn(width, device=A.device, dtype=dtype)).to(dtype)
        else:
            v = torch.zeros(width, device=A.device, dtype=dtype)
        embeds = add_adapter_container(
            layer, "lora_velora_embed", lambda: BufferDict(persistent=True), trainable=False
        )
        embeds[adapter_name] = v

    def _update_projection(self, layer: Any, adapter_name: str, x: torch.Tensor) -> None:
        init = self.config.init_type
        if init == "random" or (init == "batch_average_once" and self.projection_set):
            return
        with torch.no_grad():
            mean = sub_tokens(x.detach(), self.config.num_groups).flatten(0, 1).mean(dim=0)
            old = layer.lora_velora_embed[adapter_name]
            layer.lora_velora_embed[adapter_name] = unit_vector(mean).to(device=old.device, dtype=old.dtype)
        self.projection_set = True

    def forward(
        self, layer: Any, adapter_name: str, x: torch.Tensor, result: torch.Tensor, base_result: torch.Tensor
    ) -> torch.Tensor:
        lora_A, lora_B = layer.lora_A[adapter_name], layer.lora_B[adapter_name]
        x = layer.lora_dropout[adapter_name](layer._cast_input_dtype(x, lora_A.weight.dtype))
        if layer.training and torch.is_grad_enabled():
            self._update_projection(layer, adapter_name, x)
            v = layer.lora_velora_embed[adapter_name]
            after_A = _CompressedLinear.apply(x, lora_A.weight, v, self.config.num_groups, self.config.scale)
        else:
            after_A = lora_A(x)
        return layer._add_adapter_output(result, lora_B(after_A) * layer.scaling[adapter_name])
