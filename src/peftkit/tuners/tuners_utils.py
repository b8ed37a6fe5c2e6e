"""The tuner framework: what every layer-adapting method shares.

`BaseTunerLayer` is mixed into each adapted layer. It owns the per-adapter bookkeeping (which adapters
exist, which are active, which are merged, whether adapters are disabled), the forward loop over the
active adapters, mixed-adapter batches, merging/unmerging, device/dtype placement and deletion. A method
only says which attributes hold its per-adapter state, how to create it, what output an adapter adds
(`_adapter_output`) and how it changes the weight (`get_delta_weight`, or the merge pair for
non-additive methods).

`BaseTuner` wraps a whole model: it finds the targeted modules, replaces them with tuner layers (keeping
the original as `.base_layer`), and offers the model-level operations (set/delete adapters, merge,
unload, trainable-parameter bookkeeping, `modules_to_save`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..config import PeftConfig
from ..utils.modules_to_save import ModulesToSaveWrapper, set_modules_to_save
from ..utils.other import get_submodules
from ..utils.warnings import PeftWarning
from ._targeting import (
    expand_all_linear,
    is_targeted,
    modules_outside_adapters,
    no_match_error,
    unmatched_list_entries,
    warn_if_regex_in_list,
)
from ._tied_weights import warn_about_tied_weights

BASE_ADAPTER_NAME = "__base__"  # in `adapter_names=`, the samples that get no adapter
# Tuner methods that only some methods have; asking another tuner for them names the method in the error.
_TUNER_ONLY_METHODS = ("add_weighted_adapter",)
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _as_list(names: str | Iterable[str]) -> list[str]:
    return [names] if isinstance(names, str) else list(names)


class BaseTunerLayer:
    """Mixin for an adapted layer; the original layer is kept as `self.base_layer`.

    The layer computes `base_layer(x) + sum(adapter_output(a, x) for a in active adapters)`, or only
    `base_layer(x)` when adapters are disabled or merged into the base weight.
    """

    # Attributes (ModuleDict/ParameterDict) holding each adapter's trainable tensors, keyed by adapter name.
    adapter_layer_names: tuple[str, ...] = ()
    # Attributes (dicts or ModuleDicts) holding each adapter's other state (rank, scaling, dropout...).
    other_param_names: tuple[str, ...] = ()

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
        while hasattr(base, "base_layer"):
            base = base.base_layer
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

    def _adapter_tensors(self, adapter_name: str) -> Iterator[torch.Tensor]:
        """Every parameter and buffer that belongs to `adapter_name` in this layer."""
        for attr in self.adapter_layer_names:
            container = getattr(self, attr)
            if adapter_name not in container:
                continue
            item = container[adapter_name]
            if isinstance(item, nn.Module):
                yield from item.parameters()
                yield from item.buffers()
            else:
                yield item

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
        self._active_adapter = adapter_names

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove every tensor and setting of `adapter_name`; if it was active, activate another one."""
        for container in self._adapter_dicts():
            if adapter_name in container:
                del container[adapter_name]
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

    def _finish_new_adapter(self, adapter_name: str) -> None:
        """Put the new adapter's tensors beside the base weight.

        Floating adapter tensors take the base weight's float dtype (fp32 adapters on an fp16 base are
        restored by the tuner's `autocast_adapter_dtype` step); quantized bases keep fp32 adapters.
        """
        base = self.get_base_layer()
        weight = next(
            (getattr(base, n) for n in ("weight", "qweight") if getattr(base, n, None) is not None), None
        )
        if weight is None or weight.device.type == "meta":
            return
        dtype = weight.dtype if weight.dtype.is_floating_point else None
        for tensor in self._adapter_tensors(adapter_name):
            # meta tensors (low_cpu_mem_usage) have no data to move: they are filled from a file later
            if tensor.is_meta:
                continue
            if tensor.device != weight.device or (dtype is not None and tensor.dtype != dtype):
                tensor.data = tensor.data.to(weight.device, dtype=dtype or tensor.dtype)

    def _mark_new_adapter_trainable(self, adapter_name: str, inference_mode: bool = False) -> None:
        """A new adapter trains only if it is active (O(1): the other adapters are left as they are)."""
        trainable = adapter_name in self.active_adapters and not inference_mode
        for tensor in self._adapter_tensors(adapter_name):
            tensor.requires_grad_(trainable)

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
            return self._forward_with_adapted_weight(active, x, *args, **kwargs)
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
        adapted = base.weight
        for name in active:
            adapted = self._weight_in_forward(name, adapted)
        params = {"weight": adapted}
        if getattr(base, "bias", None) is not None:
            params["bias"] = base.bias.to(adapted.dtype)
        inputs = (self._cast_input_dtype(x, adapted.dtype), *args)
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
        return self.get_base_layer().weight.data

    def _write_base_weight(self, weight: torch.Tensor) -> None:
        """Store a merged or unmerged weight in the base layer (a quantized base layer requantizes it)."""
        base_weight = self.get_base_layer().weight
        base_weight.data = weight.to(base_weight.dtype)

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
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if not self.has_adapter(name):
                continue
            self._write_base_weight(self._unmerged_weight(name, self._dense_base_weight()))
            unmerged_bias = self._unmerged_bias(name)
            if unmerged_bias is not None:
                base.bias.data = unmerged_bias.to(base.bias.dtype)

    def _adapters_to_merge(self, adapter_names: list[str] | None) -> list[str]:
        names = self.active_adapters if adapter_names is None else _as_list(adapter_names)
        already = [n for n in names if n in self.merged_adapters]
        if already:
            warnings.warn(
                f"Already following adapters were merged {','.join(already)}. Skipping them.", PeftWarning
            )
        return [n for n in names if n not in self.merged_adapters]


class BaseTuner(nn.Module):
    """Wraps a model and adapts the modules an adapter config targets.

    A method subclass sets `prefix` (the start of its parameter names, e.g. "lora_"), `tuner_layer_cls`,
    `target_module_mapping` (default targets per `model_type`), and implements `_create_new_module` and
    `_layer_kwargs`. Everything else is shared.
    """

    prefix: str = ""
    tuner_layer_cls: type[BaseTunerLayer] = BaseTunerLayer
    target_module_mapping: dict[str, Any] = {}

    def __init__(
        self,
        model: nn.Module,
        peft_config: PeftConfig | dict[str, PeftConfig],
        adapter_name: str,
        low_cpu_mem_usage: bool = False,
        state_dict: dict | None = None,
        autocast_adapter_dtype: bool = True,
    ) -> None:
        super().__init__()
        earlier_configs = getattr(model, "peft_config", None)  # adapters injected into `model` before
        adapted_before = any(isinstance(m, BaseTunerLayer) for m in model.modules())
        self.model = model
        self.targeted_module_names: list[str] = []
        self.targeted_parameter_names: list[str] = []
        configs = peft_config if isinstance(peft_config, dict) else {adapter_name: peft_config}
        self.peft_config: dict[str, PeftConfig] = dict(configs)
        self.active_adapter: str | list[str] = adapter_name
        self.inject_adapter(
            self.model,
            adapter_name,
            autocast_adapter_dtype=autocast_adapter_dtype,
            low_cpu_mem_usage=low_cpu_mem_usage,
        )
        # a further injection into an adapted model (transformers' add_adapter/load_adapter): one config
        # dict for all the model's adapters, and the new adapter is the active one, as in PEFT
        if isinstance(earlier_configs, dict) and earlier_configs:
            earlier_configs.update(self.peft_config)
            self.peft_config = earlier_configs
        if adapted_before:
            self.set_adapter(adapter_name, inference_mode=self.peft_config[adapter_name].inference_mode)
        # transformers' integration reads the config off the wrapped model
        self.model.peft_config = self.peft_config

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            if name in _TUNER_ONLY_METHODS:  # not delegated to the model: say which method lacks it
                types = sorted(
                    {getattr(c.peft_type, "value", str(c.peft_type)) for c in self.peft_config.values()}
                )
                raise AttributeError(
                    f"{type(self).__name__} ({', '.join(types)}) has no `{name}`: combining adapters is implemented "
                    "for LoRA and IA3 only. Combine these adapters' outputs another way, or use LoRA/IA3."
                ) from None
            return getattr(self.model, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.forward(*args, **kwargs)

    @property
    def active_adapters(self) -> list[str]:
        return _as_list(self.active_adapter)

    # ----- hooks for methods -----
    def _create_new_module(self, config: PeftConfig, adapter_name: str, target: nn.Module, **kwargs: Any):
        raise NotImplementedError

    def _layer_kwargs(self, config: PeftConfig, key: str) -> dict[str, Any]:
        """The per-module keyword arguments for `update_layer` (e.g. rank from rank_pattern)."""
        raise NotImplementedError

    def _check_new_adapter_config(self, config: PeftConfig) -> None:
        """Reject a config that cannot live beside the adapters already present."""

    def _pre_injection_hook(
        self, model: nn.Module, config: PeftConfig, adapter_name: str, matched: list[str]
    ) -> None:
        """Runs once per new adapter, after its targets (`matched` module names) are known and before any
        layer is created: a method builds state shared by all its layers here (VeRA's projections).
        A failure here or later rolls back through `_remove_partial_adapter`."""

    def _tuner_state_keys(self, adapter_name: str) -> dict[str, str]:
        """Tensors the tuner itself holds for `adapter_name` (shared by its layers) that are saved with the
        adapter: state-dict keys relative to the tuner -> file keys relative to it (default: none)."""
        return {}

    def _adapter_tensors_to_save(
        self, tensors: dict[str, torch.Tensor], adapter_name: str
    ) -> dict[str, torch.Tensor]:
        """The tensors of `adapter_name` (file keys) as `get_peft_model_state_dict` returns and files hold
        them; a method may reshape them here (AdaLoRA keeps only the ranks it allocated). Identity by default."""
        return tensors

    def _adapter_config_to_save(self, config: PeftConfig, adapter_name: str) -> PeftConfig:
        """Adjust the copy of `adapter_name`'s config that is written beside its weights (AdaLoRA names its
        layers in `rank_pattern` without the adapter name). Identity by default."""
        return config

    def _method_for(self, config: PeftConfig) -> type[BaseTuner]:
        """The tuner class whose layer rules (`_layer_kwargs`, `_create_new_module`, `tuner_layer_cls`,
        `target_module_mapping`) apply to `config`: this tuner's own class, or, in a mixed model, the
        class of `config`'s method."""
        return type(self)

    def _prepare_adapter_config(self, config: PeftConfig, model_config: dict) -> PeftConfig:
        if config.target_modules is None:
            model_type = model_config.get("model_type")
            mapping = self._method_for(config).target_module_mapping
            if model_type not in mapping:
                raise ValueError(
                    f"target_modules is None and peftkit has no default targets for model_type {model_type!r}: "
                    "please specify target_modules in the config (e.g. ['q_proj', 'v_proj'] or 'all-linear')."
                )
            default = mapping[model_type]
            config.target_modules = default if isinstance(default, str) else set(default)
        return config

    @staticmethod
    def get_model_config(model: nn.Module) -> dict:
        config = getattr(model, "config", None)
        if config is None:
            return {"model_type": "custom"}
        return config.to_dict() if hasattr(config, "to_dict") else dict(config)

    # ----- injection -----
    def _skip_keys(self, model: nn.Module) -> set[str]:
        """Names of modules that belong to adapters or wrappers; nothing below them is targeted."""
        return {
            name
            for name, module in model.named_modules()
            if isinstance(module, (BaseTunerLayer, ModulesToSaveWrapper))
        }

    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        state_dict: dict | None = None,
    ) -> None:
        """Create adapter `adapter_name` (its config already in `self.peft_config`) in every targeted module."""
        config = self.peft_config[adapter_name]
        self._check_new_adapter_config(config)
        config = self._prepare_adapter_config(config, self.get_model_config(model))
        modules_to_save = list(getattr(config, "modules_to_save", None) or [])
        modules = modules_outside_adapters(model)
        expanded = expand_all_linear(config, model, modules, excluded_names=modules_to_save)
        warn_if_regex_in_list(config.target_modules)

        matched = [key for key, _ in modules if is_targeted(config, key)]
        # a method may target parameters instead of modules (LoRA's target_parameters); it checks those itself
        if not matched and not getattr(config, "target_parameters", None):
            raise no_match_error(config, model)
        wrapped = [k for k, m in modules if k in matched and isinstance(m, ModulesToSaveWrapper)]
        overlap = [
            n for n in modules_to_save if any(k == n or k.endswith("." + n) for k in matched)
        ] + wrapped
        if overlap:
            raise ValueError(
                f"modules_to_save {overlap} overlap the adapted target modules; a module can be fully trained "
                "(modules_to_save) or adapted, not both. Remove it from one of them."
            )
        try:
            self._pre_injection_hook(model, config, adapter_name, matched)
            with _meta_init(low_cpu_mem_usage):
                for key in matched:
                    parent, target, target_name = get_submodules(model, key)
                    self._create_and_replace(
                        config, adapter_name, target, target_name, parent, current_key=key
                    )
        except BaseException:
            self._remove_partial_adapter(model, adapter_name)
            raise
        unmatched = [] if expanded else unmatched_list_entries(config.target_modules, matched)
        if unmatched:
            warnings.warn(
                f"target_modules entries {unmatched} of adapter '{adapter_name}' matched no module and were ignored.",
                PeftWarning,
            )
        known = set(self.targeted_module_names)
        self.targeted_module_names.extend(k for k in matched if k not in known)
        saved = [k for k, _ in modules if any(k == n or k.endswith("." + n) for n in modules_to_save)]
        warn_about_tied_weights(modules, matched, saved)

        self._mark_only_adapters_as_trainable(model)
        if modules_to_save:
            set_modules_to_save(model, adapter_name, modules_to_save, skip=self._skip_keys(model))
            for module in model.modules():
                if isinstance(module, ModulesToSaveWrapper):
                    module.set_adapter(self.active_adapter)
        if config.inference_mode:
            for module in self._tuner_layers(model):
                for tensor in module._adapter_tensors(adapter_name):
                    tensor.requires_grad_(False)
        if autocast_adapter_dtype:
            self._cast_adapter_dtype(adapter_name, [model.get_submodule(k) for k in matched])

    def _remove_partial_adapter(self, model: nn.Module, adapter_name: str) -> None:
        """Undo a failed injection: drop `adapter_name` everywhere, unwrap layers left without adapters."""
        for key, module in list(model.named_modules()):
            if isinstance(module, BaseTunerLayer) and adapter_name in module._get_available_adapters():
                module.delete_adapter(adapter_name)
                if not module._get_available_adapters():
                    parent, _, name = get_submodules(model, key)
                    setattr(parent, name, module.get_base_layer())

    def _create_and_replace(
        self,
        config: PeftConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
    ) -> None:
        method = self._method_for(config)
        kwargs = method._layer_kwargs(self, config, current_key)
        if isinstance(target, method.tuner_layer_cls):
            target.update_layer(adapter_name, **kwargs)
            return
        new_module = method._create_new_module(self, config, adapter_name, target, **kwargs)
        new_module.set_adapter(self.active_adapter)  # a new, inactive adapter starts frozen
        setattr(parent, target_name, new_module)

    def _cast_adapter_dtype(self, adapter_name: str, layers: list[nn.Module] | None = None) -> None:
        """fp16/bf16 tensors of `adapter_name` become fp32 (in `layers`, default: every adapter layer)."""
        for module in self._tuner_layers(self.model) if layers is None else layers:
            if isinstance(module, BaseTunerLayer):
                module.cast_adapter_dtype(adapter_name)

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        """Freeze everything but adapter tensors; then open biases as the configs' `bias` asks."""
        for param in model._parameters.values():
            if param is not None:
                param.requires_grad = False
        for _, module in modules_outside_adapters(model):
            if isinstance(module, BaseTunerLayer):
                module.get_base_layer().requires_grad_(False)
            elif not isinstance(module, ModulesToSaveWrapper):
                for param in module._parameters.values():
                    if param is not None:
                        param.requires_grad = False
        for adapter in self.active_adapters:
            bias = getattr(self.peft_config[adapter], "bias", "none")
            if bias == "all":
                for name, param in model.named_parameters():
                    if "bias" in name:
                        param.requires_grad = True
            elif bias.endswith("_only"):
                for module in self._tuner_layers(model):
                    if module.bias is not None:
                        module.bias.requires_grad = True

    # ----- model-level operations -----
    @staticmethod
    def _tuner_layers(model: nn.Module) -> Iterator[BaseTunerLayer]:
        return (m for m in model.modules() if isinstance(m, BaseTunerLayer))

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Activate `adapter_name` (or several) in every adapted layer and modules_to_save wrapper."""
        missing = [n for n in _as_list(adapter_name) if n not in self.peft_config]
        if missing:
            raise ValueError(
                f"Adapter(s) {missing} not found; available adapters: {sorted(self.peft_config)}."
            )
        for module in self.model.modules():
            if isinstance(module, BaseTunerLayer):
                if module.merged:
                    warnings.warn("Adapters were merged; unmerging them before switching.", PeftWarning)
                    module.unmerge()
                module.set_adapter(adapter_name, inference_mode=inference_mode)
            elif isinstance(module, ModulesToSaveWrapper):
                module.set_adapter(adapter_name, inference_mode=inference_mode)
        self.active_adapter = adapter_name

    def _set_adapter_layers(self, enabled: bool) -> None:
        for module in self.model.modules():
            if isinstance(module, (BaseTunerLayer, ModulesToSaveWrapper)):
                module.enable_adapters(enabled)

    def enable_adapter_layers(self) -> None:
        """Turn every adapter back on."""
        self._set_adapter_layers(True)

    def disable_adapter_layers(self) -> None:
        """Turn every adapter off: the model computes the base model's outputs."""
        self._set_adapter_layers(False)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove `adapter_name` from every layer and from `peft_config`."""
        if adapter_name not in self.peft_config:
            raise ValueError(f"Adapter {adapter_name} does not exist; available: {sorted(self.peft_config)}.")
        del self.peft_config[adapter_name]
        new_active: list[str] | None = None
        for module in self.model.modules():
            if isinstance(module, (BaseTunerLayer, ModulesToSaveWrapper)):
                module.delete_adapter(adapter_name)
                if isinstance(module, BaseTunerLayer) and new_active is None:
                    new_active = module.active_adapters
        if new_active is None:
            new_active = [a for a in self.active_adapters if a != adapter_name]
        self.active_adapter = new_active[0] if len(new_active) == 1 else new_active

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        """Merge the active (or the named) adapters into the base weights, keeping the adapter layers.

        Nested layers (mixed models) merge innermost first; `unmerge_adapter` undoes them outermost first.
        """
        for module in reversed(list(self._tuner_layers(self.model))):
            module.merge(safe_merge=safe_merge, adapter_names=adapter_names)

    def unmerge_adapter(self) -> None:
        """Take every merged adapter back out of the base weights."""
        for module in self._tuner_layers(self.model):
            if module.merged:
                module.unmerge()

    def merge_and_unload(
        self, progressbar: bool = False, safe_merge: bool = False, adapter_names: list[str] | None = None
    ) -> nn.Module:
        """Merge the adapters into the base weights and return the plain base model (no adapter layers)."""
        return self._unload_and_optionally_merge(True, progressbar, safe_merge, adapter_names)

    def unload(self) -> nn.Module:
        """Return the base model with every adapter layer removed and nothing merged."""
        return self._unload_and_optionally_merge(False)

    def _unload_and_optionally_merge(
        self,
        merge: bool,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ) -> nn.Module:
        keys = [
            name
            for name, m in self.model.named_modules()
            if isinstance(m, (BaseTunerLayer, ModulesToSaveWrapper))
        ]
        # outermost first, so a wrapped wrapper is handled once
        keys = [k for k in keys if not _has_ancestor_in(k, set(keys))]
        for key in tqdm(
            keys, disable=not progressbar, desc="Unloading " + ("and merging " if merge else "") + "model"
        ):
            parent, target, target_name = get_submodules(self.model, key)
            if isinstance(target, BaseTunerLayer):
                if merge:  # every tuner layer of a nested chain (mixed models) merges its own adapters,
                    chain = []  # innermost first: an outer layer (e.g. a rotation) acts on what is inside it
                    layer = target
                    while isinstance(layer, BaseTunerLayer):
                        chain.append(layer)
                        layer = layer.base_layer
                    for layer in reversed(chain):
                        layer.merge(safe_merge=safe_merge, adapter_names=adapter_names)
                replacement = target.get_base_layer()
            else:
                replacement = target.unwrapped_module()
            setattr(parent, target_name, replacement)
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config
        return self.model

    def get_nb_adapter_layers(self) -> int:
        return sum(1 for _ in self._tuner_layers(self.model))


def _group_by_name(adapter_names: list[str]) -> dict[str, list[int]]:
    """Sample indices per adapter name, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(adapter_names):
        groups.setdefault(name, []).append(index)
    return groups


def _has_ancestor_in(key: str, owners: set[str]) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:i]) in owners for i in range(1, len(parts)))


@contextmanager
def _meta_init(enabled: bool) -> Iterator[None]:
    """With `enabled`, new adapter tensors are created on the meta device (filled later from a file)."""
    if not enabled:
        yield
        return
    with torch.device("meta"):
        yield


def check_target_module_exists(config: PeftConfig, key: str) -> bool:
    """Whether module `key` is targeted by `config` (PEFT's name for `is_targeted`)."""
    return is_targeted(config, key)
