"""DoRA (Liu et al., 2024): the adapted weight re-normalised per output channel, with a learned magnitude.

    W' = m * V / ||V||,   V = W + s * B A

`||V||` is the L2 norm over everything but the output channel, treated as a constant for the gradient
(the paper, section 4.3). Unmerged, the layer computes the same thing from the base output:

    y = base(x) + (m / ||V|| - 1) * (W x) + (m / ||V||) * s * B A x

The magnitude `m` is a module holding it as its `weight`, in the layer's `lora_magnitude_vector`, so the
state-dict key is `lora_magnitude_vector.<adapter>.weight` as in PEFT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .variants import LoraVariant

if TYPE_CHECKING:
    from .layer import LoraLayer

# A row of zeros would divide by zero; its magnitude starts at zero too, so the scale is 0, not NaN.
_MIN_NORM = 1e-12

# Whether DoRA layers in eval mode keep their weight norm ||W + s B A|| between forward calls instead of
# recomputing it (faster inference, one norm vector per adapter and layer more memory). Set through
# `peftkit.helpers.DoraCaching`. A cached norm is reused only while the tensors it was computed from are
# the same and unmodified (their storage and version counters), so loading, merging or rescaling an adapter
# never reads a stale norm.
ENABLE_DORA_CACHING = False


def _tensor_stamp(value: object) -> object:
    if torch.is_tensor(value):
        return (value.data_ptr(), value._version, value.dtype, value.device)
    return value


def channel_norm(weight_out_first: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """L2 norm of each output channel (dim 0) of a weight, reshaped to `shape`."""
    norm = weight_out_first.flatten(1).norm(p=2, dim=1).clamp_min(_MIN_NORM)
    return norm.reshape(shape)


class MagnitudeVector(nn.Module):
    """Holds DoRA's magnitude `m` (initialised to the base weight's channel norms)."""

    def __init__(self, initial_norm: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(initial_norm.clone(), requires_grad=True)


class DoraVariant(LoraVariant):
    """DoRA on a Linear (plain or quantized) or a convolution."""

    name = "DoRA"
    config_field = "use_dora"

    def __init__(self) -> None:
        self._norm_at_merge: torch.Tensor | None = None  # ||V|| when merged: unmerging divides by it
        self._cached_norm: tuple[tuple, torch.Tensor] | None = None  # (inputs' stamp, norm): DoRA caching

    def init(self, layer: LoraLayer, adapter_name: str, inference_mode: bool = False) -> None:
        groups = getattr(layer.get_base_layer(), "groups", 1)
        if groups > 1:
            # A grouped convolution's LoRA factors do not form one weight delta of the base weight's shape,
            # so DoRA's per-channel norm ||W + s B A|| is undefined (peft reshapes a mismatched product).
            raise ValueError(
                f"DoRA is not supported on a grouped convolution ({layer.get_base_layer()!r}, groups={groups}): "
                "use plain LoRA (use_dora=False) on this layer, or exclude it with `exclude_modules`."
            )
        # the magnitude starts at ||W + s B A|| of the initialised factors, so the adapter starts as LoRA does
        layer.lora_magnitude_vector[adapter_name] = MagnitudeVector(self.weight_norm(layer, adapter_name))
        layer._finish_new_adapter(adapter_name, inference_mode)

    def weight_norm(
        self, layer: LoraLayer, adapter_name: str, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """||W + delta|| per output channel (W: the base weight by default), in fp32, detached."""
        if weight is None:
            weight = layer._dense_base_weight()
        delta = layer.get_delta_weight(adapter_name)
        if delta.is_meta:  # low_cpu_mem_usage: only the shape matters, the values come from the file
            weight = weight.to("meta")
        adapted = layer._weight_out_in(weight.float() + delta.float())
        return channel_norm(adapted.detach(), layer._magnitude_shape())

    def scale(self, layer: LoraLayer, adapter_name: str) -> torch.Tensor:
        """m / ||W + s B A|| (the magnitude's shape and dtype)."""
        magnitude = layer.lora_magnitude_vector[adapter_name].weight
        return magnitude / self._forward_norm(layer, adapter_name).to(magnitude.dtype)

    def _forward_norm(self, layer: LoraLayer, adapter_name: str) -> torch.Tensor:
        """||W + s B A|| for the forward: from the cache under DoRA caching in eval mode (see
        `ENABLE_DORA_CACHING`), else computed."""
        if not ENABLE_DORA_CACHING or layer.training:
            self._cached_norm = None
            return self.weight_norm(layer, adapter_name)
        sources = (layer.get_base_layer().weight, *layer._adapter_tensors(adapter_name))
        stamp = (*(_tensor_stamp(t) for t in sources), _tensor_stamp(layer.scaling[adapter_name]))
        if self._cached_norm is None or self._cached_norm[0] != stamp:
            self._cached_norm = (stamp, self.weight_norm(layer, adapter_name))
        return self._cached_norm[1]

    def merged_weight(self, layer: LoraLayer, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        adapted = super().merged_weight(layer, adapter_name, weight)
        self._norm_at_merge = self.weight_norm(layer, adapter_name, weight)
        scale = layer.lora_magnitude_vector[adapter_name].weight.float() / self._norm_at_merge
        return _scale_out_channels(layer, adapted, scale)

    def unmerged_weight(self, layer: LoraLayer, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        norm, self._norm_at_merge = self._norm_at_merge, None
        scale = layer.lora_magnitude_vector[adapter_name].weight.float() / norm
        return (
            _scale_out_channels(layer, weight.float(), 1 / scale)
            - layer.get_delta_weight(adapter_name).float()
        )

    def forward(
        self,
        layer: LoraLayer,
        adapter_name: str,
        x: torch.Tensor,
        result: torch.Tensor,
        base_result: torch.Tensor,
    ) -> torch.Tensor:
        lora_A, lora_B = layer.lora_A[adapter_name], layer.lora_B[adapter_name]
        dropout = layer.lora_dropout[adapter_name]
        x_dropped = dropout(layer._cast_input_dtype(x, lora_A.weight.dtype))
        if isinstance(dropout, nn.Identity) or not layer.training:
            # W x from the base output; with several adapters active, `base_result` is the output
            # accumulated so far (as in PEFT)
            bias = layer.bias
            base_out = base_result if bias is None else base_result - layer._per_channel(bias)
        else:  # W x of the dropped-out input, which the base layer did not see
            base_out = layer._apply_base_weight(x_dropped)
        scale = layer._per_channel(self.scale(layer, adapter_name))
        output = (scale - 1) * base_out + scale * lora_B(lora_A(x_dropped)) * layer.scaling[adapter_name]
        return layer._add_adapter_output(result, output)


class DoraEmbeddingVariant(DoraVariant):
    """DoRA on an Embedding: the lookup has no input to drop out, so `W x` is always the base output."""

    def forward(
        self,
        layer: LoraLayer,
        adapter_name: str,
        x: torch.Tensor,
        result: torch.Tensor,
        base_result: torch.Tensor,
    ) -> torch.Tensor:
        lora_out = layer._adapter_output(adapter_name, x, base_result)
        scale = self.scale(layer, adapter_name)
        return layer._add_adapter_output(result, (scale - 1) * base_result + scale * lora_out)


def _scale_out_channels(layer: LoraLayer, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Multiply each output channel of a base-layout weight by `scale`."""
    out_first = layer._weight_out_in(weight)
    return layer._weight_out_in(out_first * scale.reshape(-1, *[1] * (weight.dim() - 1)))
