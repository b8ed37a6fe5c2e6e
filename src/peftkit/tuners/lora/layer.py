"""LoRA layers: `y = base(x) + (alpha / r) * B(A(dropout(x)))`, for Linear, Embedding and ConvNd bases.

Each kind only says how A and B are shaped and applied; the framework (`BaseTunerLayer`) runs the loop
over active adapters, mixed batches, merging and bookkeeping. DoRA (`use_dora`) re-normalises the
adapted weight: `W' = m * (W + s B A) / ||W + s B A||` (norm per output channel, treated as a constant
for the gradient, as in the DoRA paper, section 4.3).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..._skip_init import empty_linear, skip_init
from ...utils.warnings import PeftWarning
from .._dropout import input_dropout
from .._scaling import ScalingHelpers
from ..tuners_utils import BaseTunerLayer
from . import dora, fused_training
from .bdlora import factor_weight, is_plain
from .config import init_is_implemented


class LoraLayer(ScalingHelpers, BaseTunerLayer):
    """State shared by every LoRA layer kind: ranks, alphas, scalings, dropouts, the A/B factors."""

    adapter_layer_names = (
        "lora_A",
        "lora_B",
        "lora_embedding_A",
        "lora_embedding_B",
        "lora_magnitude_vector",
    )
    other_param_names = ("r", "lora_alpha", "scaling", "lora_dropout")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.lora_dropout = nn.ModuleDict({})
        self.lora_A = nn.ModuleDict({})
        self.lora_B = nn.ModuleDict({})
        self.lora_embedding_A = nn.ParameterDict({})
        self.lora_embedding_B = nn.ParameterDict({})
        self.lora_magnitude_vector = nn.ModuleDict()
        self.use_dora: dict[str, bool] = {}
        self.lora_bias: dict[str, bool] = {}
        self.kwargs = kwargs

    def has_adapter(self, adapter_name: str) -> bool:
        return adapter_name in self.lora_A or adapter_name in self.lora_embedding_A

    # ----- creation -----
    def update_layer(
        self,
        adapter_name: str,
        r: int,
        lora_alpha: float,
        lora_dropout: float = 0.0,
        init_lora_weights: bool | str = True,
        use_rslora: bool = False,
        use_dora: bool = False,
        lora_bias: bool = False,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create (or re-create) adapter `adapter_name` on this layer."""
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        if not init_is_implemented(init_lora_weights):
            raise NotImplementedError(
                f"init_lora_weights={init_lora_weights!r} is not implemented in peftkit yet; use True, False, "
                "'gaussian', 'pissa', 'pissa_niter_K', 'olora', 'orthogonal', 'corda', 'eva' or 'loftq'."
            )
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r
        self.lora_dropout[adapter_name] = input_dropout(lora_dropout)
        self.use_dora[adapter_name] = use_dora
        self.lora_bias[adapter_name] = lora_bias
        self._create_factors(adapter_name, r, lora_bias)
        self.reset_lora_parameters(adapter_name, init_lora_weights)
        self._finish_new_adapter(adapter_name, inference_mode)
        if use_dora:  # the magnitude is computed from the placed factors, then placed itself
            self.lora_magnitude_vector[adapter_name] = dora.MagnitudeVector(
                self._dora_weight_norm(adapter_name)
            )
            self._finish_new_adapter(adapter_name, inference_mode)

    def _create_factors(self, adapter_name: str, r: int, lora_bias: bool) -> None:
        raise NotImplementedError

    def reset_lora_parameters(self, adapter_name: str, init_lora_weights: bool | str) -> None:
        """Initialise A and B so that the adapter starts as a no-op (B = 0); with False, both random."""
        if init_lora_weights is False:
            if adapter_name in self.lora_A:  # the layer type's default initialisation for both factors
                self.lora_A[adapter_name].reset_parameters()
                self.lora_B[adapter_name].reset_parameters()
            return
        if adapter_name in self.lora_A:
            if init_lora_weights == "gaussian":
                nn.init.normal_(self.lora_A[adapter_name].weight, std=1 / self.r[adapter_name])
            else:
                nn.init.kaiming_uniform_(self.lora_A[adapter_name].weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B[adapter_name].weight)
            if self.lora_bias[adapter_name]:
                nn.init.zeros_(self.lora_B[adapter_name].bias)
            if isinstance(init_lora_weights, str) and init_lora_weights != "gaussian":
                from .inits import apply_init  # PiSSA, OLoRA, orthogonal, CorDA, EVA, LoftQ

                apply_init(self, adapter_name, init_lora_weights)
        if adapter_name in self.lora_embedding_A:
            # A is read as a lookup table, so it starts at zero and B is random (the product is still 0)
            nn.init.zeros_(self.lora_embedding_A[adapter_name])
            nn.init.normal_(self.lora_embedding_B[adapter_name])

    # ----- DoRA -----
    def _weight_out_in(self, weight: torch.Tensor) -> torch.Tensor:
        """The base weight with output channels first (transposed for Conv1D / Embedding)."""
        return weight

    def _dora_weight_norm(self, adapter_name: str, weight: torch.Tensor | None = None) -> torch.Tensor:
        """||W + delta|| per output channel, in fp32, detached (DoRA treats it as a constant)."""
        if weight is None:
            weight = self.get_base_layer().weight
        delta = self.get_delta_weight(adapter_name)
        if delta.is_meta:  # low_cpu_mem_usage: only the shape matters, the values come from the file
            weight = weight.to("meta")
        adapted = self._weight_out_in(weight.float() + delta.float())
        return dora.channel_norm(adapted.detach(), self._magnitude_shape())

    def _magnitude_shape(self) -> tuple[int, ...]:
        return (-1,)

    def _dora_scale(self, adapter_name: str) -> torch.Tensor:
        """m / ||W + s B A||, shaped to broadcast over this layer's output."""
        magnitude = self.lora_magnitude_vector[adapter_name].weight
        norm = self._dora_weight_norm(adapter_name).to(magnitude.dtype)
        return magnitude / norm

    def _merged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        adapted = super()._merged_weight(adapter_name, weight)
        if not self.use_dora.get(adapter_name, False):
            return adapted
        norm = self._dora_weight_norm(adapter_name, weight)
        self._caches[f"{adapter_name}-weight_norm"] = norm
        scale = self.lora_magnitude_vector[adapter_name].weight.float() / norm
        return self._scale_out_channels(adapted, scale)

    def _unmerged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        if not self.use_dora.get(adapter_name, False):
            return super()._unmerged_weight(adapter_name, weight)
        norm = self._caches.pop(f"{adapter_name}-weight_norm")
        scale = self.lora_magnitude_vector[adapter_name].weight.float() / norm
        return (
            self._scale_out_channels(weight.float(), 1 / scale) - self.get_delta_weight(adapter_name).float()
        )

    def _scale_out_channels(self, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Multiply each output channel of a base-layout weight by `scale`."""
        return self._weight_out_in(self._weight_out_in(weight) * scale.reshape(-1, *[1] * (weight.dim() - 1)))

    def _bias_delta(self, adapter_name: str) -> torch.Tensor | None:
        if not self.lora_bias.get(adapter_name, False):
            return None
        if self.get_base_layer().bias is None:
            raise RuntimeError(
                f"Impossible to merge LoRA adapter '{adapter_name}' with `lora_bias=True` because the base layer has "
                "no bias to merge it into; keep this adapter unmerged."
            )
        return self.lora_B[adapter_name].bias * self.scaling[adapter_name]

    def _default_scaling(self, adapter: str) -> float:
        return self.lora_alpha[adapter] / self.r[adapter]

    def __repr__(self) -> str:
        return "lora." + super().__repr__()


def _in_out_features(base_layer: nn.Module) -> tuple[int, int]:
    from transformers.pytorch_utils import Conv1D

    if isinstance(base_layer, Conv1D):  # weight stored as (in, out)
        return base_layer.weight.shape[0], base_layer.weight.shape[1]
    if isinstance(base_layer, nn.Embedding):
        return base_layer.num_embeddings, base_layer.embedding_dim
    if isinstance(base_layer, nn.modules.conv._ConvNd):
        return base_layer.in_channels, base_layer.out_channels
    return base_layer.in_features, base_layer.out_features


class Linear(LoraLayer, nn.Module):
    """LoRA on `nn.Linear` or transformers' `Conv1D` (`fan_in_fan_out=True`: weight stored as (in, out))."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        r: int = 0,
        lora_alpha: int = 1,
        lora_dropout: float = 0.0,
        fan_in_fan_out: bool = False,
        is_target_conv_1d_layer: bool = False,
        init_lora_weights: bool | str = True,
        use_rslora: bool = False,
        use_dora: bool = False,
        lora_bias: bool = False,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        LoraLayer.__init__(self, base_layer, **kwargs)
        self.fan_in_fan_out = fan_in_fan_out
        self.is_target_conv_1d_layer = is_target_conv_1d_layer
        self.in_features, self.out_features = _in_out_features(base_layer)
        self._active_adapter = adapter_name
        self.update_layer(
            adapter_name,
            r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            init_lora_weights=init_lora_weights,
            use_rslora=use_rslora,
            use_dora=use_dora,
            lora_bias=lora_bias,
        )

    def _forward_with(self, active: list[str], x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if fused_training.applies(
            self, active, x, args, kwargs
        ):  # training: one autograd node, fewer temporaries
            return fused_training.forward(self, active[0], x)
        return super()._forward_with(active, x, *args, **kwargs)

    def _create_factors(self, adapter_name: str, r: int, lora_bias: bool) -> None:
        # uninitialised: reset_lora_parameters initialises them right away
        self.lora_A[adapter_name] = empty_linear(self.in_features, r, bias=False)
        self.lora_B[adapter_name] = empty_linear(r, self.out_features, bias=lora_bias)

    def _weight_out_in(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.T if self.fan_in_fan_out else weight

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """`s * B @ A`, transposed to (in, out) for Conv1D; fp32 when the factors are half precision."""
        weight_A, weight_B = factor_weight(self.lora_A[adapter]), factor_weight(self.lora_B[adapter])
        if weight_A.dtype in (torch.float16, torch.bfloat16) and weight_A.device.type == "cpu":
            weight_A, weight_B = weight_A.float(), weight_B.float()
        return self._weight_out_in(weight_B @ weight_A) * self.scaling[adapter]

    def _apply_adapter(
        self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, base_result: torch.Tensor
    ) -> torch.Tensor:
        """Fused fast path: `result += s * (x A^T) B^T` as one in-place addmm (no extra full-size tensors)."""
        alora = getattr(self, "_alora", None)
        if alora and adapter_name in alora:  # activated LoRA (alora.py): only tokens from the invocation on
            return alora[adapter_name].apply(self, adapter_name, x, result)
        scaling = self.scaling[adapter_name]
        lora_A, lora_B = self.lora_A[adapter_name], self.lora_B[adapter_name]
        if (
            self.use_dora[adapter_name]
            or torch.is_tensor(scaling)
            or not (is_plain(lora_A) and is_plain(lora_B))
        ):
            return super()._apply_adapter(adapter_name, x, result, base_result)
        x = self._cast_input_dtype(x, lora_A.weight.dtype)
        if self.training:  # dropout is a no-op in eval: skip even the call
            x = self.lora_dropout[adapter_name](x)
        hidden = F.linear(x, lora_A.weight)
        if hidden.dtype != result.dtype or not result.is_contiguous():
            # mixed precision: add in the adapter's precision, as the unfused formula does
            return result + lora_B(hidden) * scaling
        flat_result, flat_hidden = result.view(-1, result.shape[-1]), hidden.reshape(-1, hidden.shape[-1])
        if torch.is_grad_enabled() and (result.requires_grad or hidden.requires_grad):
            # autograd: out of place (an in-place update of a view would cost a full copy in backward)
            fused = torch.addmm(flat_result, flat_hidden, lora_B.weight.t(), alpha=scaling).view(result.shape)
        else:
            fused = result
            flat_result.addmm_(flat_hidden, lora_B.weight.t(), alpha=scaling)
        if lora_B.bias is not None:
            fused = fused + lora_B.bias * scaling
        return fused

    def _add_mixed_batch_outputs(
        self, x: torch.Tensor, result: torch.Tensor, adapter_names: list[str]
    ) -> torch.Tensor:
        """All adapters of the batch in one gathered matmul pair (S-LoRA/punica style), not one pass each.

        The A and B factors of the batch's adapters are stacked (zero-padded to the largest rank, the
        scaling folded into B, slot 0 all zeros for "__base__") and gathered per sample for two `bmm`s.
        """
        names = tuple(sorted({n for n in adapter_names if self.has_adapter(n)}))
        if any(n in getattr(self, "_alora", {}) for n in names):
            raise ValueError("Mixed-adapter batches (adapter_names=) are not supported with aLoRA adapters.")
        plain = all(
            not self.use_dora[n]
            and self.lora_B[n].bias is None
            and is_plain(self.lora_A[n])
            and is_plain(self.lora_B[n])
            for n in names
        )
        if not names or not plain or x.dim() < 2 or any(torch.is_tensor(self.scaling[n]) for n in names):
            return super()._add_mixed_batch_outputs(x, result, adapter_names)
        stack_A, stack_B = self._stacked_factors(names)
        slots = {name: i + 1 for i, name in enumerate(names)}
        index = torch.tensor([slots.get(n, 0) for n in adapter_names], device=stack_A.device)
        inputs = self._cast_input_dtype(x, stack_A.dtype).reshape(x.shape[0], -1, x.shape[-1])
        hidden = torch.bmm(inputs, stack_A[index].transpose(1, 2))
        delta = torch.bmm(hidden, stack_B[index].transpose(1, 2)).reshape(result.shape)
        if delta.dtype == result.dtype:
            return result.add_(delta)
        return (result + delta).to(result.dtype)

    def _stacked_factors(self, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked (A, s*B) of `names`, cached until a factor or scaling changes."""
        weights = [(self.lora_A[n].weight, self.lora_B[n].weight) for n in names]
        key = (names, tuple((a._version, a.data_ptr(), b._version, b.data_ptr()) for a, b in weights))
        key += (tuple(self.scaling[n] for n in names),)
        cached = getattr(self, "_stack_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        rank = max(self.r[n] for n in names)
        first_A = weights[0][0]
        stack_A = first_A.new_zeros(len(names) + 1, rank, first_A.shape[1])
        stack_B = first_A.new_zeros(len(names) + 1, weights[0][1].shape[0], rank)
        with torch.no_grad():
            for slot, (name, (weight_A, weight_B)) in enumerate(zip(names, weights), start=1):
                stack_A[slot, : weight_A.shape[0]] = weight_A
                stack_B[slot, :, : weight_B.shape[1]] = weight_B * self.scaling[name]
        self._stack_cache = (key, stack_A, stack_B)
        return stack_A, stack_B

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        lora_A, lora_B = self.lora_A[adapter_name], self.lora_B[adapter_name]
        dropout = self.lora_dropout[adapter_name]
        scaling = self.scaling[adapter_name]
        x = self._cast_input_dtype(x, lora_A.weight.dtype)
        if not self.use_dora[adapter_name]:
            return lora_B(lora_A(dropout(x))) * scaling
        x_dropped = dropout(x)
        base_out = None
        if isinstance(dropout, nn.Identity) or not self.training:
            # with several adapters active, `base_result` is the output accumulated so far (as in PEFT)
            base_out = base_result if self.bias is None else base_result - self.bias
        else:
            base_out = F.linear(x_dropped, self._weight_out_in(self.weight).to(x.dtype))
        scale = self._dora_scale(adapter_name).view(1, -1)
        return (scale - 1) * base_out + scale * lora_B(lora_A(x_dropped)) * scaling


class Embedding(LoraLayer, nn.Module):
    """LoRA on `nn.Embedding`: `y = E[x] + s * A.T[x] @ B.T` (A: (r, num_embeddings), B: (dim, r))."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        r: int = 0,
        lora_alpha: int = 1,
        lora_dropout: float = 0.0,
        init_lora_weights: bool | str = True,
        use_rslora: bool = False,
        use_dora: bool = False,
        lora_bias: bool = False,
        **kwargs: Any,
    ) -> None:
        if lora_bias:
            raise ValueError(f"lora_bias={lora_bias} is not supported for {type(self).__name__}.")
        nn.Module.__init__(self)
        LoraLayer.__init__(self, base_layer, **kwargs)
        self.in_features, self.out_features = _in_out_features(base_layer)
        self._active_adapter = adapter_name
        self.update_layer(
            adapter_name,
            r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            init_lora_weights=init_lora_weights,
            use_rslora=use_rslora,
            use_dora=use_dora,
            lora_bias=lora_bias,
        )

    def _create_factors(self, adapter_name: str, r: int, lora_bias: bool) -> None:
        self.lora_embedding_A[adapter_name] = nn.Parameter(torch.randn(r, self.in_features))
        self.lora_embedding_B[adapter_name] = nn.Parameter(torch.randn(self.out_features, r))

    def _weight_out_in(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.T  # (num_embeddings, dim): the embedding dim plays the output channel

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        weight_A, weight_B = self.lora_embedding_A[adapter], self.lora_embedding_B[adapter]
        if weight_A.dtype in (torch.float16, torch.bfloat16) and weight_A.device.type == "cpu":
            weight_A, weight_B = weight_A.float(), weight_B.float()
        return (weight_B @ weight_A).T * self.scaling[adapter]

    def _embed(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        base = self.get_base_layer()
        return F.embedding(
            x,
            table,
            padding_idx=base.padding_idx,
            max_norm=base.max_norm,
            norm_type=base.norm_type,
            scale_grad_by_freq=base.scale_grad_by_freq,
            sparse=base.sparse,
        )

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        embedding_A = self.lora_embedding_A[adapter_name].T
        embedding_B = self.lora_embedding_B[adapter_name].T
        lora_out = (self._embed(x, embedding_A) @ embedding_B) * self.scaling[adapter_name]
        if not self.use_dora[adapter_name]:
            return lora_out
        scale = self._dora_scale(adapter_name)
        return (scale - 1) * base_result + scale * lora_out


class _ConvNd(LoraLayer, nn.Module):
    """LoRA on a convolution: A is a conv with the base kernel, B a 1x1 conv (grouped like the base)."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        r: int = 0,
        lora_alpha: int = 1,
        lora_dropout: float = 0.0,
        init_lora_weights: bool | str = True,
        use_rslora: bool = False,
        use_dora: bool = False,
        lora_bias: bool = False,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        LoraLayer.__init__(self, base_layer, **kwargs)
        self.in_features, self.out_features = _in_out_features(base_layer)
        self._kernel_dim = base_layer.weight.dim()
        if base_layer.groups > 1:
            warnings.warn(
                "LoRA adapter added to ConvNd layer with groups > 1. Merging is not supported.", PeftWarning
            )
        if r % base_layer.groups != 0:
            raise ValueError(f"r={r} must be divisible by the conv layer's groups={base_layer.groups}.")
        self._active_adapter = adapter_name
        self.update_layer(
            adapter_name,
            r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            init_lora_weights=init_lora_weights,
            use_rslora=use_rslora,
            use_dora=use_dora,
            lora_bias=lora_bias,
        )

    def _create_factors(self, adapter_name: str, r: int, lora_bias: bool) -> None:
        base = self.get_base_layer()
        conv = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[self._kernel_dim]
        ones = (1,) * (self._kernel_dim - 2)
        self.lora_A[adapter_name] = skip_init(
            conv, self.in_features, r, base.kernel_size, base.stride, base.padding, bias=False
        )
        self.lora_B[adapter_name] = skip_init(
            conv, r, self.out_features, ones, ones, groups=base.groups, bias=lora_bias
        )

    def _magnitude_shape(self) -> tuple[int, ...]:
        return (1, -1) + (1,) * (self._kernel_dim - 2)

    def _check_mergeable(self) -> None:
        if self.get_base_layer().groups > 1:
            raise NotImplementedError(
                "Merging LoRA into a grouped convolution (groups > 1) is not supported."
            )

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        weight_A, weight_B = self.lora_A[adapter].weight, self.lora_B[adapter].weight
        if weight_A.dtype in (torch.float16, torch.bfloat16) and weight_A.device.type == "cpu":
            weight_A, weight_B = weight_A.float(), weight_B.float()
        if all(k == 1 for k in self.get_base_layer().weight.shape[2:]):
            delta = (weight_B.flatten(1) @ weight_A.flatten(1)).reshape(
                weight_B.shape[0], weight_A.shape[1], *weight_A.shape[2:]
            )
        else:
            conv_fn = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[self._kernel_dim]
            delta = conv_fn(weight_A.transpose(0, 1), weight_B).transpose(0, 1)
        return delta * self.scaling[adapter]

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        lora_A, lora_B = self.lora_A[adapter_name], self.lora_B[adapter_name]
        dropout = self.lora_dropout[adapter_name]
        scaling = self.scaling[adapter_name]
        x = self._cast_input_dtype(x, lora_A.weight.dtype)
        if not self.use_dora[adapter_name]:
            return lora_B(lora_A(dropout(x))) * scaling
        x_dropped = dropout(x)
        base = self.get_base_layer()
        if isinstance(dropout, nn.Identity) or not self.training:
            bias = base.bias
            base_out = (
                base_result if bias is None else base_result - bias.view(1, -1, *[1] * (self._kernel_dim - 2))
            )
        else:
            base_out = base._conv_forward(x_dropped, base.weight.to(x.dtype), None)
        scale = self._dora_scale(adapter_name)
        return (scale - 1) * base_out + scale * lora_B(lora_A(x_dropped)) * scaling


class Conv1d(_ConvNd):
    """LoRA on `nn.Conv1d`."""


class Conv2d(_ConvNd):
    """LoRA on `nn.Conv2d`."""


class Conv3d(_ConvNd):
    """LoRA on `nn.Conv3d`."""
