"""`BaseTunerLayer`: the mixin every adapted layer uses (see `tuners_utils` for the whole framework).

It owns the per-adapter bookkeeping of one layer (which adapters exist, which are active, which are
merged, whether adapters are disabled), the forward loop over the active adapters, mixed-adapter
batches, merging/unmerging, device/dtype placement and deletion. A method only says which attributes
hold its per-adapter state, how to create it, what output an adapter adds (`_adapter_output`) and how it
changes the weight (`get_delta_weight`, or the merge pair for non-additive methods).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.warnings import PeftWarning
from . import _quantized
from ._mixed_batch import BASE_ADAPTER_NAME
from ._weight_change import conversion_refusal

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _as_list(names: str | Iterable[str]) -> list[str]:
    return [names] if isinstance(names, str) else list(names)


def _group_by_name(adapter_names: list[str]) -> dict[str, list[int]]:
    """Sample indices per adapter name, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(adapter_names):
        groups.setdefault(name, []).append(index)
    return groups


class BaseTunerLayer:
    """Mixin for an adapted layer; the original layer is kept as `self.base_layer`.

    The layer computes `base_layer(x) + sum(adapter_output(a, x) for a in active adapters)`, or only
    `base_layer(x)` when adapters are disabled or merged into the base weight.
    """

    # Attributes (ModuleDict/ParameterDict) holding each adapter's trainable tensors, keyed by adapter name.
    adapter_layer_names: tuple[str, ...] = ()
    # Attributes (dicts or ModuleDicts) holding each adapter's other state (rank, scaling, dropout...).
    other_param_names: tuple[str, ...] = ()
    # Those of `other_param_names` that are plain dicts of tensors (so outside the state dict) which adapter
    # files hold all the same, as `<layer>.<name>` (SHiRA's sparse indices): saved and loaded by the framework.
    saved_other_param_names: tuple[str, ...] = ()
    # Adapter name -> those of `adapter_layer_names` whose tensors stay frozen whatever trainability the adapter
    # gets (peft's name; MiCA trains only LoRA's A). Filled per layer by `freeze_adapter_weights`.
    frozen_peft_weight_names: dict[str, tuple[str, ...]] = {}

    _active_adapter: str | list[str] = "default"
    _disable_adapters: bool = False
    merged_adapters: list[str]
    cast_input_dtype_enabled: bool = True

    def _init_tuner_layer(self, base_layer: nn.Module) -> None:
        self.base_layer = base_layer
        self.merged_adapters = []
        self._disable_adapters = False
        self._caches: dict[str, torch.Tensor] = {}

    # ----- the wrapped layer -----
    def get_base_layer(self) -> nn.Module:
        """The original layer, unwrapping nested tuner layers."""
        base = self
        # `_modules` lookups: hasattr on a plain nn.Module raises (and catches) an AttributeError
        while "base_layer" in base._modules:
            base = base._modules["base_layer"]
        return base

    @property
    def weight(self) -> torch.Tensor:
        return self.get_base_layer().weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.get_base_layer(), "bias", None)

    # ----- adapter state -----
    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    @property
    def disable_adapters(self) -> bool:
        return self._disable_adapters

    @property
    def active_adapter(self) -> str | list[str]:
        return self._active_adapter

    @property
    def active_adapters(self) -> list[str]:
        return _as_list(self._active_adapter)

    def _adapter_dicts(self) -> Iterator[Any]:
        for attr in self.adapter_layer_names + self.other_param_names:
            container = getattr(self, attr, None)
            if container is not None:
                yield container

    def has_adapter(self, adapter_name: str) -> bool:
        """Whether this layer holds trainable state for `adapter_name`."""
        return any(adapter_name in getattr(self, attr) for attr in self.adapter_layer_names)

    def _get_available_adapters(self) -> set[str]:
        return {name for attr in self.adapter_layer_names for name in getattr(self, attr)}

    def _all_available_adapter_names(self) -> list[str]:
        """Every adapter name this layer has anything for, weights or settings (e.g. a scaling), sorted."""
        return sorted(
            {name for container in self._adapter_dicts() if hasattr(container, "keys") for name in container}
        )

    def _adapter_tensors(self, adapter_name: str) -> Iterator[torch.Tensor]:
        """Every parameter and buffer that belongs to `adapter_name` in this layer."""
        for attr in self.adapter_layer_names:
            container = getattr(self, attr)
            if adapter_name not in container:
                continue
            item = container[adapter_name]
            if not isinstance(item, nn.Module):
                yield item
            elif item._modules:
                yield from item.parameters()
                yield from item.buffers()
            else:  # a leaf module (the usual nn.Linear factor): its own tensors, without the generators
                yield from (t for t in item._parameters.values() if t is not None)
                yield from (t for t in item._buffers.values() if t is not None)

    def enable_adapters(self, enabled: bool) -> None:
        """Turn the adapters on (restoring the active ones' trainability) or off (freezing them)."""
        if enabled:
            self.set_adapter(self._active_adapter)
            self._disable_adapters = False
        else:
            for attr in self.adapter_layer_names:
                getattr(self, attr).requires_grad_(False)
            self._disable_adapters = True

    def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False) -> None:
        """Make `adapter_names` the active adapters; only they are trainable (unless inference_mode)."""
        names = _as_list(adapter_names)
        for attr in self.adapter_layer_names:
            container = getattr(self, attr)
            for key in container:
                trainable = key in names and not inference_mode
                container[key].requires_grad_(trainable)
        self._freeze_non_trainable_peft_weights(names)
        self._active_adapter = adapter_names

    def freeze_adapter_weights(self, adapter_name: str, container_name: str) -> None:
        """Keep the tensors of `adapter_name` in container `container_name` (one of `adapter_layer_names`)
        frozen from now on, also when the adapter is made trainable again (set_adapter, loading with
        is_trainable=True, ...)."""
        frozen = dict(self.frozen_peft_weight_names)  # this layer's own copy, never the class default
        names = frozen.get(adapter_name, ())
        if container_name not in names:
            frozen[adapter_name] = (*names, container_name)
        self.frozen_peft_weight_names = frozen
        self._freeze_non_trainable_peft_weights([adapter_name])

    def _freeze_non_trainable_peft_weights(self, adapter_names: Iterable[str] | None = None) -> None:
        """Freeze again the tensors `freeze_adapter_weights` declared frozen (of `adapter_names`, default all)."""
        if not self.frozen_peft_weight_names:
            return
        names = self.frozen_peft_weight_names.keys() if adapter_names is None else adapter_names
        for name in names:
            for container_name in self.frozen_peft_weight_names.get(name, ()):
                container = getattr(self, container_name, None)
                if container is not None and name in container:
                    container[name].requires_grad_(False)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove every tensor and setting of `adapter_name`; if it was active, activate another one."""
        for container in self._adapter_dicts():
            if adapter_name in container:
                del container[adapter_name]
        if adapter_name in self.frozen_peft_weight_names:
            self.frozen_peft_weight_names = {
                k: v for k, v in self.frozen_peft_weight_names.items() if k != adapter_name
            }
        if adapter_name in self.merged_adapters:
            self.merged_adapters.remove(adapter_name)
        active = [a for a in self.active_adapters if a != adapter_name]
        if active != self.active_adapters and not active:
            remaining = sorted(self._get_available_adapters())
            if remaining:
                warnings.warn(
                    f"Adapter {adapter_name} was active and is deleted; setting {remaining[0]} active.",
                    PeftWarning,
                )
                active = remaining[:1]
        self.set_adapter(active[0] if len(active) == 1 else active)

    def _finish_new_adapter(self, adapter_name: str, inference_mode: bool = False) -> None:
        """Put the new adapter's tensors beside the base weight and set whether they train, in one pass.

        Floating adapter tensors take the base weight's float dtype (fp32 adapters on an fp16 base are
        restored by the tuner's `autocast_adapter_dtype` step); quantized bases keep fp32 adapters. The
        adapter trains only if it is active and not in inference mode (other adapters are left as they are).
        """
        weight = self._placement_reference()
        if weight is not None and weight.device.type == "meta":
            weight = None  # low_cpu_mem_usage: nothing to move to
        dtype = weight.dtype if weight is not None and weight.dtype.is_floating_point else None
        trainable = adapter_name in self.active_adapters and not inference_mode
        for tensor in self._adapter_tensors(adapter_name):
            # meta tensors (low_cpu_mem_usage) have no data to move: they are filled from a file later
            if weight is not None and not tensor.is_meta:
                # integer buffers (PSOFT's index tables) keep their dtype
                target_dtype = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
                if tensor.device != weight.device or tensor.dtype != target_dtype:
                    tensor.data = tensor.data.to(weight.device, dtype=target_dtype)
            if isinstance(tensor, nn.Parameter):  # an adapter's buffers (GLoRA's zeros) never train
                tensor.requires_grad_(trainable)
        self._freeze_non_trainable_peft_weights([adapter_name])

    def _placement_reference(self) -> torch.Tensor | None:
        """The tensor whose device and float dtype new adapter tensors take: the base layer's weight."""
        base = self.get_base_layer()
        weight = base._parameters.get("weight")
        if weight is None:  # quantized layers may keep their weight elsewhere (GPTQ/AWQ `qweight`)
            weight = next((getattr(base, n, None) for n in ("weight", "qweight") if hasattr(base, n)), None)
        return weight

    def _mark_new_adapter_trainable(self, adapter_name: str, inference_mode: bool = False) -> None:
        """A new adapter trains only if it is active (O(1): the other adapters are left as they are)."""
        trainable = adapter_name in self.active_adapters and not inference_mode
        for tensor in self._adapter_tensors(adapter_name):
            if isinstance(tensor, nn.Parameter):
                tensor.requires_grad_(trainable)
        self._freeze_non_trainable_peft_weights([adapter_name])

    def cast_adapter_dtype(self, adapter_name: str, dtype: torch.dtype = torch.float32) -> None:
        """Cast the fp16/bf16 tensors of `adapter_name` to `dtype` (fp32 adapters train stably)."""
        for tensor in self._adapter_tensors(adapter_name):
            if tensor.dtype in _HALF_DTYPES:
                tensor.data = tensor.data.to(dtype)

    # ----- forward -----
    def _cast_input_dtype(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if not self.cast_input_dtype_enabled or x.dtype == dtype or not x.is_floating_point():
            return x
        return x.to(dtype)

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        """What adapter `adapter_name` adds to the base layer's output `base_result` for input `x`."""
        raise NotImplementedError

    def _needs_base_result(self, adapter_name: str) -> bool:
        """True when the adapter's output depends on the pure base output (e.g. DoRA)."""
        return False

    def _output_without_base(self, active: list[str], x: torch.Tensor) -> torch.Tensor | None:
        """The layer's whole output under the adapters `active` (at least one), when the method computes it
        more cheaply without running the base layer (FRoD multiplies by the factors of its adapted weight);
        None (the default) runs the base layer and adds each adapter's output."""
        return None

    # Methods that change the base layer's *input* (IA3 on feed-forward layers, OFT-style rotations) set
    # this and implement `_transform_input`; the framework then feeds the transformed input to the base.
    transforms_input: bool = False

    def _transform_input(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """The input the base layer sees under adapter `adapter_name` (identity by default)."""
        return x

    # Methods whose adapted layer is the base layer run with an adapted weight that is no cheaper to apply
    # to the input (HRA/OFT-style rotations of a convolution kernel) set this: the framework then runs the
    # base layer with `_merged_weight` applied for each active adapter, in merge order, so the unmerged
    # forward is the merged one by construction.
    adapts_weight_in_forward: bool = False

    def _weight_in_forward(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        """The adapted weight an `adapts_weight_in_forward` layer runs with: `_merged_weight` by default; a
        method may add training-only noise here that a merge must not see (BOFT's block dropout)."""
        return self._merged_weight(adapter_name, weight)

    def _output_beside_weight(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """For an `adapts_weight_in_forward` layer: `result` (the layer run with the adapted weight) plus
        what adapter `adapter_name` adds beside its weight change, e.g. a low-rank branch next to a
        sparse weight update (SuperTuning's Supra mode). Nothing by default."""
        return result

    def _mixed_batch_by_group(self) -> bool:
        """True when an adapter changes what the base layer computes (its input, its weight, or the layer
        itself): a mixed batch then runs one full pass per group of samples sharing an adapter."""
        return self.transforms_input or self.adapts_weight_in_forward

    def _apply_adapter(
        self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, base_result: torch.Tensor
    ) -> torch.Tensor:
        """The layer output with adapter `adapter_name` applied to `result` (default: add its output).

        A method may override this with a fused, in-place version, or a multiplicative one (output
        scaling). In-place updates of `result` are allowed: the framework hands in a tensor that nothing
        else reads (it keeps a separate `base_result` when an active adapter needs the pure base output).
        """
        return result + self._adapter_output(adapter_name, x, base_result)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter_names = kwargs.pop("adapter_names", None)
        if self._disable_adapters:
            if self.merged_adapters:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if adapter_names is not None:
            return self._mixed_batch_forward(x, adapter_names, *args, **kwargs)
        if self.merged_adapters:
            return self.base_layer(x, *args, **kwargs)
        active = [name for name in self.active_adapters if self.has_adapter(name)]
        return self._forward_with(active, x, *args, **kwargs)

    def _forward_with(self, active: list[str], x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The layer's output with the adapters `active` applied (unmerged)."""
        if self.adapts_weight_in_forward and active:
            result = self._forward_with_adapted_weight(active, x, *args, **kwargs)
            for name in active:
                result = self._output_beside_weight(name, x, result)
            return result
        if active:
            output = self._output_without_base(active, x)
            if output is not None:
                return output
        base_input = x
        if self.transforms_input:
            for name in active:
                base_input = self._transform_input(name, base_input)
        result = self.base_layer(base_input, *args, **kwargs)
        if not active:
            return result
        dtype = result.dtype
        base_result = result.clone() if any(self._needs_base_result(a) for a in active) else result
        for name in active:
            result = self._apply_adapter(name, x, result, base_result)
        return result if result.dtype == dtype else result.to(dtype)

    def _forward_with_adapted_weight(
        self, active: list[str], x: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """`base_layer` called with its weight replaced by the weight with `active` merged in (not in place).

        The layer runs in the precision the adapted weight was computed in (fp32 for half-precision bases,
        as PEFT does), and the output returns to the input's dtype.
        """
        base = self.get_base_layer()
        quantized = _quantized.quantization_backend(base) is not None
        # a quantized layer cannot run with a plain weight: its dequantized weight is adapted and applied
        adapted = self._dense_base_weight() if quantized else base.weight
        for name in active:
            adapted = self._weight_in_forward(name, adapted)
        bias = getattr(base, "bias", None)
        bias = None if bias is None else bias.to(adapted.dtype)
        inputs = (self._cast_input_dtype(x, adapted.dtype), *args)
        if quantized:
            return F.linear(inputs[0], adapted, bias).to(x.dtype)
        params = {"weight": adapted} if bias is None else {"weight": adapted, "bias": bias}
        return torch.func.functional_call(base, params, inputs, kwargs).to(x.dtype)

    def _mixed_batch_forward(
        self, x: torch.Tensor, adapter_names: list[str], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Sample i gets adapter `adapter_names[i]` ("__base__": none)."""
        if not self._mixed_batch_by_group():
            return self._add_mixed_batch_outputs(x, self.base_layer(x, *args, **kwargs), adapter_names)
        # the base layer sees a different input per adapter: one full pass per group of samples
        result = None
        for name, indices in _group_by_name(adapter_names).items():
            rows = torch.tensor(indices, device=x.device)
            active = [name] if name != BASE_ADAPTER_NAME and self.has_adapter(name) else []
            part = self._forward_with(active, x[rows], *args, **kwargs)
            if result is None:
                result = part.new_empty((x.shape[0], *part.shape[1:]))
            result[rows] = part
        return result

    def _add_mixed_batch_outputs(
        self, x: torch.Tensor, result: torch.Tensor, adapter_names: list[str]
    ) -> torch.Tensor:
        """Sample i gets adapter `adapter_names[i]` ("__base__": none); one pass per adapter by default."""
        dtype = result.dtype
        for name, indices in _group_by_name(adapter_names).items():
            if name == BASE_ADAPTER_NAME or not self.has_adapter(name):
                continue
            rows = torch.tensor(indices, device=result.device)
            sub_base = result[rows]  # a copy: `_apply_adapter` may update it in place
            pure = sub_base.clone() if self._needs_base_result(name) else sub_base
            updated = self._apply_adapter(name, x[rows], sub_base, pure).to(dtype)
            result = result.index_copy(0, rows, updated)
        return result

    # ----- merging -----
    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The change adapter `adapter_name` makes to the base weight, in the base weight's layout."""
        raise NotImplementedError(f"{type(self).__name__} cannot be merged.")

    def _bias_delta(self, adapter_name: str) -> torch.Tensor | None:
        """The change to the base bias on merge (None: the adapter has no bias)."""
        return None

    def _merged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        """The base weight with the adapter merged in; additive by default (computed in fp32)."""
        return weight.float() + self.get_delta_weight(adapter_name).float()

    def _unmerged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        """Inverse of `_merged_weight`."""
        return weight.float() - self.get_delta_weight(adapter_name).float()

    def _merged_bias(self, adapter_name: str) -> torch.Tensor | None:
        """The base bias with the adapter merged in (fp32), or None when the adapter leaves it alone.

        Additive by default (`bias + _bias_delta`); a method that scales outputs (IA3) overrides this pair.
        """
        delta = self._bias_delta(adapter_name)
        return None if delta is None else self.get_base_layer().bias.data.float() + delta.float()

    def _unmerged_bias(self, adapter_name: str) -> torch.Tensor | None:
        """Inverse of `_merged_bias`."""
        delta = self._bias_delta(adapter_name)
        return None if delta is None else self.get_base_layer().bias.data.float() - delta.float()

    def _dense_base_weight(self) -> torch.Tensor:
        """The base weight as a plain tensor to merge into (a quantized base layer dequantizes it)."""
        return _quantized.dense_weight(self.get_base_layer())

    def _write_base_weight(self, weight: torch.Tensor) -> None:
        """Store a merged or unmerged weight in the base layer (a quantized base layer requantizes it; an
        HQQ layer is replaced by a new one)."""
        base = self.get_base_layer()
        stored = _quantized.store_weight(base, weight)
        if stored is not base:
            holder = self
            while holder._modules["base_layer"] is not base:
                holder = holder._modules["base_layer"]
            holder.base_layer = stored

    def _warn_requantizing(self, merging: bool) -> None:
        """Say that merging into (or unmerging from) a quantized base rounds the weight to its grid."""
        backend = _quantized.quantization_backend(self.get_base_layer())
        if backend is not None:
            warnings.warn(_quantized.requantizing_message(backend, merging), PeftWarning, stacklevel=4)

    def _unloaded_base_layer(self) -> nn.Module:
        """The module that takes this layer's place when its adapters are removed: the base layer (a layer
        that also adapted modules inside its base layer restores them first)."""
        return self.get_base_layer()

    def _check_mergeable(self) -> None:
        """Raise when this layer's adapters cannot be merged (a method may override)."""

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Fold the adapters into the base weight.

        With `safe_merge`, the merged weight is computed aside and checked for NaN/inf first: a broken
        adapter then raises and leaves the base weight untouched.
        """
        names = self._adapters_to_merge(adapter_names)
        if not names:
            return
        self._check_mergeable()
        base = self.get_base_layer()
        _quantized.check_writable(base)
        if any(self.has_adapter(name) for name in names):
            self._warn_requantizing(merging=True)
        for name in names:
            if not self.has_adapter(name):
                continue
            merged = self._merged_weight(name, self._dense_base_weight())
            merged_bias = self._merged_bias(name)
            if safe_merge and not (
                torch.isfinite(merged).all() and (merged_bias is None or torch.isfinite(merged_bias).all())
            ):
                raise ValueError(
                    f"NaNs or infs found in the merged weights of adapter '{name}': the adapter seems broken, "
                    "so the base weights were left unchanged."
                )
            self._write_base_weight(merged)
            if merged_bias is not None:
                base.bias.data = merged_bias.to(base.bias.dtype)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Take every merged adapter back out of the base weight (last merged first)."""
        if not self.merged_adapters:
            warnings.warn("Already unmerged. Nothing to do.", PeftWarning)
            return
        base = self.get_base_layer()
        self._warn_requantizing(merging=False)
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if not self.has_adapter(name):
                continue
            self._write_base_weight(self._unmerged_weight(name, self._dense_base_weight()))
            unmerged_bias = self._unmerged_bias(name)
            if unmerged_bias is not None:
                base.bias.data = unmerged_bias.to(base.bias.dtype)

    # ----- gradients, and conversion to LoRA (`_weight_change`, `peftkit.tuners.lora.conversion`) -----
    def set_requires_grad(self, adapter_names: str | Iterable[str], requires_grad: bool = True) -> None:
        """Turn gradients on or off for the tensors of `adapter_names` on this layer (which adapters are
        active is left alone)."""
        names = set(_as_list(adapter_names))
        for attr in self.adapter_layer_names:
            container = getattr(self, attr)
            for key in container:
                if key in names:
                    container[key].requires_grad_(requires_grad)

    # A method whose effect is not a change of the layer's weight (it depends on the input, e.g. routing or
    # activation by tokens) says why here: `convert_to_lora` then refuses its layers with this reason.
    lora_conversion_refusal: str | None = None

    def _lora_conversion_refusal(self, adapter_name: str) -> str | None:
        """Why the method cannot express adapter `adapter_name` as a weight change (None: it can); by
        default the class's `lora_conversion_refusal`."""
        return self.lora_conversion_refusal

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        """Whether adapter `adapter_name` of this layer can be written as a LoRA adapter (`convert_to_lora`)."""
        return conversion_refusal(self, adapter_name) is None

    def _can_merge(self) -> bool:
        """Whether the method defines a merge (a delta weight or a merged weight) at all."""
        cls = type(self)
        return (
            cls.get_delta_weight is not BaseTunerLayer.get_delta_weight
            or cls._merged_weight is not BaseTunerLayer._merged_weight
        )

    def _merges_additively(self, adapter_name: str) -> bool:
        """Whether merging adapter `adapter_name` adds `get_delta_weight` to the weight (the default merge)."""
        return type(self)._merged_weight is BaseTunerLayer._merged_weight

    def _adapters_to_merge(self, adapter_names: list[str] | None) -> list[str]:
        names = self.active_adapters if adapter_names is None else _as_list(adapter_names)
        already = [n for n in names if n in self.merged_adapters]
        if already:
            warnings.warn(
                f"Already following adapters were merged {','.join(already)}. Skipping them.", PeftWarning
            )
        return [n for n in names if n not in self.merged_adapters]
