"""LoRA on `nn.MultiheadAttention`: one adapter on the packed query/key/value projection, one on the output
projection.

`nn.MultiheadAttention` has no sub-layer for its input projection (it multiplies by its `in_proj_weight`,
(3E, E), directly) and never calls its `out_proj`'s forward (it reads `out_proj.weight`). So the layer
cannot add an adapter's output after a sub-layer, as LoRA does elsewhere; it runs the attention with
adapted weights instead:

    in_proj_weight' = in_proj_weight + s * B A          (A: (r, E), B: (3E, r); this layer's lora_A/lora_B)
    out_proj.weight' = out_proj.weight + s * B' A'      (A': (r, E), B': (E, r); a LoRA `Linear` in out_proj)

The weights are passed to the module for the one call (`torch.func.functional_call`): nothing is written
into the base weights, gradients reach the factors, and the module tree is peft's
(`<mha>.lora_A`, `<mha>.base_layer.out_proj.lora_A`, ...), so adapter files move both ways. As in peft:
only `_qkv_same_embed_dim=True` is supported, the adapter's dropout is not applied (the weights are
adapted, not an input), and DoRA and mixed-adapter batches are refused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .layer import Linear, LoraLayer, _for_cpu_matmul

__all__ = ["MultiheadAttention"]


def _base_attribute(name: str) -> property:
    """A read-only attribute of the wrapped `nn.MultiheadAttention` (code around attention reads them)."""
    return property(lambda self: getattr(self.get_base_layer(), name), doc=f"The base attention's `{name}`.")


class MultiheadAttention(LoraLayer, nn.Module):
    """LoRA on `nn.MultiheadAttention` (see the module docstring)."""

    def __init__(
        self,
        base_layer: nn.MultiheadAttention,
        adapter_name: str,
        r: int = 0,
        lora_alpha: int = 1,
        **kwargs: Any,
    ) -> None:
        if not getattr(base_layer, "_qkv_same_embed_dim", True):
            raise ValueError(
                "LoRA on nn.MultiheadAttention supports only query, key and value of the same size as the "
                f"embedding (_qkv_same_embed_dim=True); {base_layer!r} has kdim/vdim of their own. Leave it out of "
                "target_modules."
            )
        _refuse_options(kwargs)
        if not isinstance(base_layer.out_proj, nn.Linear):
            raise TypeError(
                f"out_proj must be an instance of nn.Linear for LoRA on {type(base_layer).__name__}."
            )
        nn.Module.__init__(self)
        LoraLayer.__init__(self, base_layer)
        self.in_features, self.out_features = base_layer.embed_dim, 3 * base_layer.embed_dim
        self.fan_in_fan_out = False
        # the output projection's adapter is a LoRA Linear of its own, inside the base attention
        base_layer.out_proj = Linear(base_layer.out_proj, adapter_name, r=r, lora_alpha=lora_alpha, **kwargs)
        self._active_adapter = adapter_name
        LoraLayer.update_layer(self, adapter_name, r, lora_alpha=lora_alpha, **kwargs)

    # the attributes code around an attention module reads (nn.TransformerEncoderLayer, ...)
    embed_dim = _base_attribute("embed_dim")
    kdim = _base_attribute("kdim")
    vdim = _base_attribute("vdim")
    num_heads = _base_attribute("num_heads")
    dropout = _base_attribute("dropout")
    batch_first = _base_attribute("batch_first")
    head_dim = _base_attribute("head_dim")
    in_proj_weight = _base_attribute("in_proj_weight")
    in_proj_bias = _base_attribute("in_proj_bias")
    bias_k = _base_attribute("bias_k")
    bias_v = _base_attribute("bias_v")
    add_zero_attn = _base_attribute("add_zero_attn")

    @property
    def _qkv_same_embed_dim(self) -> bool:
        """The base attention's flag, except while the adapters change its weights unmerged: then False.

        `nn.TransformerEncoderLayer` (and `nn.TransformerEncoder`) check this flag, among others, before
        taking their fused inference kernel, which reads the attention's weights directly and would skip
        the adapters (peft 0.21 computes the base model's output there). Reporting False sends them through
        this layer's forward instead."""
        same = self.get_base_layer()._qkv_same_embed_dim
        adapts_unmerged = any(self.has_adapter(name) for name in self.active_adapters) and not self.merged
        disabled_but_merged = self.disable_adapters and self.merged
        return same and not adapts_unmerged and not disabled_but_merged

    @property
    def out_proj(self) -> nn.Module:
        """The base attention's output projection (the plain `nn.Linear`, as in peft)."""
        return self._out_layer().get_base_layer()

    def merge_masks(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor | None, int | None]:
        return self.get_base_layer().merge_masks(*args, **kwargs)

    def _out_layer(self) -> Linear:
        """The LoRA `Linear` holding the output projection's adapters."""
        return self.get_base_layer().out_proj

    # ----- creation: every adapter has both parts -----
    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, **kwargs: Any) -> None:
        _refuse_options(kwargs)
        LoraLayer.update_layer(self, adapter_name, r, lora_alpha=lora_alpha, **kwargs)
        self._out_layer().update_layer(adapter_name, r, lora_alpha=lora_alpha, **kwargs)

    def _create_factors(self, adapter_name: str, r: int, lora_bias: bool) -> None:
        self.lora_A[adapter_name] = nn.Linear(self.in_features, r, bias=False)
        self.lora_B[adapter_name] = nn.Linear(r, self.out_features, bias=lora_bias)

    def _placement_reference(self) -> torch.Tensor:
        return self.get_base_layer().in_proj_weight

    def cast_adapter_dtype(self, adapter_name: str, dtype: torch.dtype = torch.float32) -> None:
        super().cast_adapter_dtype(adapter_name, dtype)
        self._out_layer().cast_adapter_dtype(adapter_name, dtype)

    # ----- the packed input projection as this layer's weight -----
    def _delta_weight(self, adapter: str) -> torch.Tensor:
        weight_A, weight_B = _for_cpu_matmul(self.lora_A[adapter].weight, self.lora_B[adapter].weight)
        return (weight_B @ weight_A) * self.scaling[adapter]

    def _dense_base_weight(self) -> torch.Tensor:
        return self.get_base_layer().in_proj_weight.data

    def _write_base_weight(self, weight: torch.Tensor) -> None:
        base_weight = self.get_base_layer().in_proj_weight
        base_weight.data = weight.to(base_weight.dtype)

    def _merged_bias(self, adapter_name: str) -> torch.Tensor | None:
        return None  # lora_bias is refused for attention

    def _unmerged_bias(self, adapter_name: str) -> torch.Tensor | None:
        return None

    # ----- merging: both projections together -----
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        names = self.active_adapters if adapter_names is None else list(adapter_names)
        out_layer = self._out_layer()
        out_names = [n for n in names if n not in out_layer.merged_adapters]  # the tuner may have merged it
        if safe_merge:  # check both parts before either is written
            for name in (n for n in names if self.has_adapter(n) and n not in self.merged_adapters):
                for layer in (self, out_layer):
                    merged = layer._dense_base_weight().float() + layer.get_delta_weight(name).float()
                    if not torch.isfinite(merged).all():
                        raise ValueError(
                            f"NaNs detected in the merged weights. The adapter {name} seems to be broken."
                        )
        super().merge(adapter_names=names)
        if out_names:
            out_layer.merge(adapter_names=out_names)

    def unmerge(self) -> None:
        super().unmerge()
        if self._out_layer().merged:
            self._out_layer().unmerge()

    def _unloaded_base_layer(self) -> nn.Module:
        base = self.get_base_layer()
        base.out_proj = self._out_layer().get_base_layer()
        return base

    # ----- forward -----
    def forward(self, query: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if kwargs.pop("adapter_names", None) is not None:
            raise TypeError(
                "lora.MultiheadAttention does not support mixed adapter batches (adapter_names=)."
            )
        base, out_layer = self.get_base_layer(), self._out_layer()
        if self.disable_adapters:
            for layer in (self, out_layer):
                if layer.merged:
                    layer.unmerge()
            return base(query, *args, **kwargs)
        if self.merged != out_layer.merged:
            raise ValueError(
                "The out_proj of this MultiheadAttention has merged adapters but the attention itself does not "
                "(or the reverse): merge or unmerge both (merge_adapter() / unmerge_adapter() on the model)."
            )
        active = [name for name in self.active_adapters if self.has_adapter(name)]
        if self.merged or not active:
            return base(query, *args, **kwargs)
        weights = {
            "in_proj_weight": _adapted(self, active, base.in_proj_weight),
            "out_proj.base_layer.weight": _adapted(out_layer, active, out_layer.weight),
        }
        attention, attention_weights = torch.func.functional_call(base, weights, (query, *args), kwargs)
        dtype = query.dtype
        return attention.to(dtype), None if attention_weights is None else attention_weights.to(dtype)


def _adapted(layer: LoraLayer, adapters: list[str], weight: torch.Tensor) -> torch.Tensor:
    """`weight` (detached) plus the delta of each of `adapters` the layer has, in the weight's dtype."""
    adapted = weight.detach()
    for name in adapters:
        if layer.has_adapter(name):
            adapted = adapted + layer.get_delta_weight(name).to(weight.dtype)
    return adapted


def _refuse_options(kwargs: dict[str, Any]) -> None:
    """LoRA options that have no meaning on attention weights adapted this way."""
    if kwargs.get("use_dora"):
        raise ValueError("MultiheadAttention does not support DoRA (yet), please set use_dora to False")
    if kwargs.get("lora_bias"):
        raise ValueError(
            "MultiheadAttention does not support lora_bias: its projections' biases are read directly by the "
            "attention. Set lora_bias=False."
        )
