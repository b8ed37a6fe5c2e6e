"""LoRA layers, for Linear, Embedding and ConvNd bases:

    y = base(x) + s * B(A(dropout(x))),     delta W = s * B A,     s = alpha / r  (alpha / sqrt(r): rsLoRA)

with A: (r, in) and B: (out, r), B = 0 at initialisation so the adapter starts as a no-op. Each kind only
says how A and B are shaped and applied (`_adapter_output`, `_delta_weight`); the framework
(`BaseTunerLayer`) runs the loop over active adapters, mixed batches, merging and bookkeeping.

An adapter that departs from this formula (DoRA, aLoRA, bd-LoRA, ...) has a variant object in
`layer.lora_variant[name]` whose hooks replace the formula's pieces (variants.py). A Linear computes a
plain adapter (no variant) through its fast paths where they apply (fast_paths.py): the same formula
with fewer temporaries.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..._skip_init import empty_linear, skip_init
from ...utils.lazy_exports import lazy_exports
from ...utils.warnings import PeftWarning
from .._dropout import input_dropout
from .._scaling import ScalingHelpers, rank_scaling
from ..tuners_utils import BaseTunerLayer
from . import dora, fast_paths, mixed_batch
from .config import init_is_implemented
from .inits import apply_init
from .variants import PLAIN_LORA, LoraVariant

# PEFT code imports the nn.Parameter wrapper and the attention layer from here; they subclass LoraLayer, so
# they live in files of their own.
__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "ParamWrapper": "peftkit.tuners.lora.param_wrapper",
        "MultiheadAttention": "peftkit.tuners.lora.multihead_attention",
    },
)


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
    dora_variant: type[LoraVariant] = dora.DoraVariant  # the variant `use_dora=True` gives this layer kind
    # False: the adapter's output is added in its own precision; True: cast to the base output's dtype first
    casts_adapter_output: bool = False

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
        self.lora_variant: dict[str, LoraVariant] = {}  # adapters that are not plain LoRA
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
        lora_variant: LoraVariant | None = None,
        **kwargs: Any,
    ) -> None:
        """Create (or re-create) adapter `adapter_name` on this layer; with `use_dora`, a DoRA adapter, else
        one with `lora_variant` (None: plain LoRA)."""
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        if not init_is_implemented(init_lora_weights):
            raise NotImplementedError(
                f"init_lora_weights={init_lora_weights!r} is not implemented in peftkit yet; use True, False, "
                "'gaussian', 'pissa', 'pissa_niter_K', 'olora', 'orthogonal', 'corda', 'eva', 'loftq', 'mica' or "
                "'lora_ga'."
            )
        self.kwargs.update(kwargs)  # the options of this adapter's init scheme (loftq_config, lora_ga_config)
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = rank_scaling(lora_alpha, r, use_rslora)
        self.lora_dropout[adapter_name] = input_dropout(lora_dropout)
        self.use_dora[adapter_name] = use_dora
        self.lora_bias[adapter_name] = lora_bias
        self.lora_variant.pop(adapter_name, None)  # the factors are initialised as plain LoRA's
        self._create_factors(adapter_name, r, lora_bias)
        self.reset_lora_parameters(adapter_name, init_lora_weights)
        self._finish_new_adapter(adapter_name, inference_mode)
        variant = self.dora_variant() if use_dora else lora_variant
        if variant is not None:
            self.set_lora_variant(adapter_name, variant, inference_mode)
        self._tell_variants(adapter_name)

    def set_lora_variant(self, adapter_name: str, variant: LoraVariant, inference_mode: bool = False) -> None:
        """Make adapter `adapter_name` (its factors created) follow `variant` instead of plain LoRA."""
        variant.init(self, adapter_name, inference_mode=inference_mode)
        self.lora_variant[adapter_name] = variant

    def _variant(self, adapter_name: str) -> LoraVariant:
        """The hooks adapter `adapter_name` runs with: its variant's, or plain LoRA's."""
        return self.lora_variant.get(adapter_name, PLAIN_LORA)

    def delete_adapter(self, adapter_name: str) -> None:
        self.lora_variant.pop(adapter_name, None)
        super().delete_adapter(adapter_name)
        self._tell_variants(adapter_name)

    def _tell_variants(self, changed: str) -> None:
        """Tell the variants of the other adapters that adapter `changed` was added or deleted."""
        for name, variant in list(self.lora_variant.items()):
            if name != changed:
                variant.on_adapters_changed(self, name)

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
                if not isinstance(self, Linear):
                    raise ValueError(
                        f"init_lora_weights={init_lora_weights!r} is defined for LoRA on linear layers only, not on "
                        f"{type(self).__name__}; use init_lora_weights=True for this layer (e.g. leave it out of "
                        "target_modules for this adapter)."
                    )
                apply_init(
                    self, adapter_name, init_lora_weights
                )  # PiSSA, OLoRA, orthogonal, CorDA, EVA, LoftQ
        if adapter_name in self.lora_embedding_A:
            # A is read as a lookup table, so it starts at zero and B is random (the product is still 0)
            nn.init.zeros_(self.lora_embedding_A[adapter_name])
            nn.init.normal_(self.lora_embedding_B[adapter_name])

    # ----- the formula, and where a variant takes over -----
    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        """`s * B(A(dropout(x)))`, in the factors' dtype (Linear and ConvNd: A and B are modules)."""
        lora_A, lora_B = self.lora_A[adapter_name], self.lora_B[adapter_name]
        x = self._cast_input_dtype(x, lora_A.weight.dtype)
        return lora_B(lora_A(self.lora_dropout[adapter_name](x))) * self.scaling[adapter_name]

    def _add_adapter_output(self, result: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """`result + output`: how an adapter's output joins the layer's output."""
        return result + (output.to(result.dtype) if self.casts_adapter_output else output)

    def _apply_adapter(
        self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, base_result: torch.Tensor
    ) -> torch.Tensor:
        return self._variant(adapter_name).forward(self, adapter_name, x, result, base_result)

    def _check_mixed_batch_variants(self, adapter_names: list[str]) -> None:
        for name in set(adapter_names) if self.lora_variant else ():
            variant = self.lora_variant.get(name)
            if variant is not None and not variant.supports_mixed_batch:
                raise ValueError(
                    f"Mixed-adapter batches (adapter_names=) are not supported with {variant.name} adapters."
                )

    def _add_mixed_batch_outputs(
        self, x: torch.Tensor, result: torch.Tensor, adapter_names: list[str]
    ) -> torch.Tensor:
        self._check_mixed_batch_variants(adapter_names)
        return super()._add_mixed_batch_outputs(x, result, adapter_names)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """The change adapter `adapter` makes to the base weight (`s * B A` in the base weight's layout)."""
        return self._variant(adapter).delta_weight(self, adapter)

    def _delta_weight(self, adapter: str) -> torch.Tensor:
        """`s * B A` in the base weight's layout, fp32 when the factors are half precision on CPU."""
        raise NotImplementedError

    def _merged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        return self._variant(adapter_name).merged_weight(self, adapter_name, weight)

    def _merges_additively(self, adapter_name: str) -> bool:
        return type(self._variant(adapter_name)).merged_weight is LoraVariant.merged_weight

    def _lora_conversion_refusal(self, adapter_name: str) -> str | None:
        variant = self.lora_variant.get(adapter_name)
        if variant is None:
            return self.lora_conversion_refusal
        if not variant.supports_merge:
            return f"{variant.name} adapters cannot be merged: their effect depends on the input"
        return variant.lora_conversion_refusal

    def _unmerged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        return self._variant(adapter_name).unmerged_weight(self, adapter_name, weight)

    # ----- the base layer's geometry (what DoRA-like variants need) -----
    def _weight_out_in(self, weight: torch.Tensor) -> torch.Tensor:
        """The base weight with output channels first (transposed for Conv1D / Embedding)."""
        return weight

    def _magnitude_shape(self) -> tuple[int, ...]:
        """The shape of a per-output-channel vector as stored (DoRA's magnitude)."""
        return (-1,)

    def _per_channel(self, vector: torch.Tensor) -> torch.Tensor:
        """A per-output-channel vector shaped to broadcast over this layer's output."""
        return vector

    def _apply_base_weight(self, x: torch.Tensor) -> torch.Tensor:
        """`W x`: the base layer's weight applied to `x`, without its bias."""
        raise NotImplementedError

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


def _for_cpu_matmul(weight_A: torch.Tensor, weight_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors in fp32 when they are half precision on CPU (slow and inexact half matmuls there)."""
    if weight_A.dtype in (torch.float16, torch.bfloat16) and weight_A.device.type == "cpu":
        return weight_A.float(), weight_B.float()
    return weight_A, weight_B


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
    """LoRA on `nn.Linear` or transformers' `Conv1D` (`fan_in_fan_out=True`: weight stored as (in, out)):

        y = x W^T + b + s * dropout(x) A^T B^T (+ s * b_B with `lora_bias`),   delta W = s * B A

    A and B are `nn.Linear`s (A: in -> r, B: r -> out). Plain adapters run through the fast paths.
    """

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
        lora_variant: LoraVariant | None = None,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        LoraLayer.__init__(self, base_layer, **kwargs)
        self.fan_in_fan_out = fan_in_fan_out
        self.is_target_conv_1d_layer = is_target_conv_1d_layer
        self.in_features, self.out_features = _in_out_features(base_layer)
        # the stacked factors of the last mixed batch's adapters, and how the last routing maps onto them
        # (mixed_batch.py): kept across the decoding steps of a generate call
        self.mixed_factor_bank: mixed_batch.FactorBank | None = None
        self.mixed_routing: mixed_batch.LayerRouting | None = None
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
            lora_variant=lora_variant,
        )

    def _create_factors(self, adapter_name: str, r: int, lora_bias: bool) -> None:
        # uninitialised: reset_lora_parameters initialises them right away
        self.lora_A[adapter_name] = empty_linear(self.in_features, r, bias=False)
        self.lora_B[adapter_name] = empty_linear(r, self.out_features, bias=lora_bias)

    def _weight_out_in(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.T if self.fan_in_fan_out else weight

    def _per_channel(self, vector: torch.Tensor) -> torch.Tensor:
        return vector.view(1, -1)

    def _apply_base_weight(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._weight_out_in(self.weight).to(x.dtype))

    def _delta_weight(self, adapter: str) -> torch.Tensor:
        return self._delta_from_factors(adapter, self.lora_A[adapter].weight, self.lora_B[adapter].weight)

    def _delta_from_factors(
        self, adapter: str, weight_A: torch.Tensor, weight_B: torch.Tensor
    ) -> torch.Tensor:
        """`s * B @ A` from the (r, in) and (out, r) matrices, transposed to (in, out) for Conv1D."""
        weight_A, weight_B = _for_cpu_matmul(weight_A, weight_B)
        return self._weight_out_in(weight_B @ weight_A) * self.scaling[adapter]

    # ----- fast paths for plain adapters (fast_paths.py); anything else falls through to the formula -----
    def _forward_with(self, active: list[str], x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if fast_paths.fused_training_applies(self, active, x, args, kwargs):
            return fast_paths.fused_training_forward(self, active[0], x)
        return super()._forward_with(active, x, *args, **kwargs)

    def _apply_adapter(
        self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, base_result: torch.Tensor
    ) -> torch.Tensor:
        if fast_paths.in_place_add_applies(self, adapter_name):
            return fast_paths.add_in_place(self, adapter_name, x, result)
        return super()._apply_adapter(adapter_name, x, result, base_result)

    def _mixed_batch_forward(
        self, x: torch.Tensor, adapter_names: list[str], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        self._check_mixed_batch_variants(adapter_names)
        output = mixed_batch.mixed_forward(self, x, adapter_names, args, kwargs)
        if output is not None:
            return output
        return super()._mixed_batch_forward(x, adapter_names, *args, **kwargs)

    def delete_adapter(self, adapter_name: str) -> None:
        mixed_batch.drop_cached_factors(self, adapter_name)
        super().delete_adapter(adapter_name)


class Embedding(LoraLayer, nn.Module):
    """LoRA on `nn.Embedding`: `y = E[x] + s * A.T[x] @ B.T` (A: (r, num_embeddings), B: (dim, r)); no dropout
    (the input is indices)."""

    dora_variant = dora.DoraEmbeddingVariant

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
        lora_variant: LoraVariant | None = None,
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
            lora_variant=lora_variant,
        )

    def _create_factors(self, adapter_name: str, r: int, lora_bias: bool) -> None:
        self.lora_embedding_A[adapter_name] = nn.Parameter(torch.randn(r, self.in_features))
        self.lora_embedding_B[adapter_name] = nn.Parameter(torch.randn(self.out_features, r))

    def _weight_out_in(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.T  # (num_embeddings, dim): the embedding dim plays the output channel

    def _delta_weight(self, adapter: str) -> torch.Tensor:
        weight_A, weight_B = self.lora_embedding_A[adapter], self.lora_embedding_B[adapter]
        weight_A, weight_B = _for_cpu_matmul(weight_A, weight_B)
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
        return (self._embed(x, embedding_A) @ embedding_B) * self.scaling[adapter_name]


class _ConvNd(LoraLayer, nn.Module):
    """LoRA on a convolution: `y = conv(x, W) + b + s * conv_1x1(conv(dropout(x), A), B)`, A with the base's
    kernel, stride and padding, B 1x1 (grouped like the base); `delta W` is A's kernel mixed by B."""

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
        lora_variant: LoraVariant | None = None,
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
            lora_variant=lora_variant,
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

    def _per_channel(self, vector: torch.Tensor) -> torch.Tensor:
        return vector.view(self._magnitude_shape())

    def _apply_base_weight(self, x: torch.Tensor) -> torch.Tensor:
        base = self.get_base_layer()
        return base._conv_forward(x, base.weight.to(x.dtype), None)

    def _check_mergeable(self) -> None:
        if self.get_base_layer().groups > 1:
            raise NotImplementedError(
                "Merging LoRA into a grouped convolution (groups > 1) is not supported."
            )

    def _delta_weight(self, adapter: str) -> torch.Tensor:
        weight_A, weight_B = self.lora_A[adapter].weight, self.lora_B[adapter].weight
        weight_A, weight_B = _for_cpu_matmul(weight_A, weight_B)
        if all(k == 1 for k in self.get_base_layer().weight.shape[2:]):
            delta = (weight_B.flatten(1) @ weight_A.flatten(1)).reshape(
                weight_B.shape[0], weight_A.shape[1], *weight_A.shape[2:]
            )
        else:
            conv_fn = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[self._kernel_dim]
            delta = conv_fn(weight_A.transpose(0, 1), weight_B).transpose(0, 1)
        return delta * self.scaling[adapter]


class Conv1d(_ConvNd):
    """LoRA on `nn.Conv1d`."""


class Conv2d(_ConvNd):
    """LoRA on `nn.Conv2d`."""


class Conv3d(_ConvNd):
    """LoRA on `nn.Conv3d`."""
