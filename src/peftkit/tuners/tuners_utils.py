"""The tuner framework: what every layer-adapting method shares.

`BaseTunerLayer` (defined in `_tuner_layer`, importable from here as other libraries expect) is mixed
into each adapted layer: per-adapter bookkeeping, the forward loop, mixed batches, merge/unmerge.

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
from ..utils.gc_pause import gc_paused
from ..utils.lazy_exports import lazy_exports
from ..utils.modules_to_save import ModulesToSaveWrapper, has_ancestor_in, set_modules_to_save
from ..utils.other import get_submodules
from ..utils.warnings import NoMatchingPeftModuleError, PeftWarning
from ._dispatch import LayerClasses, LayerDispatcher, create_layer
from ._model_functions import (  # peft's module-level helpers, importable from here as in peft
    BasePromptEncoder,
    cast_adapter_dtype,
    check_adapters_to_merge,
    clone_module,
    delete_adapter,
    find_parameter_name_by_module,
    get_device_map,
    inspect_matched_modules,
    onload_layer,
    set_adapter,
    warn_msg_weight_tying,
)
from ._registry import default_target_modules
from ._targeting import (
    check_mamba_targets,
    drop_attention_output_projections,
    expand_all_linear,
    is_targeted,
    modules_named_in_state_dict,
    modules_outside_adapters,
    no_match_error,
    unmatched_list_entries,
    warn_if_regex_in_list,
)
from ._tied_weights import warn_about_tied_weights
from ._tuner_layer import BASE_ADAPTER_NAME, BaseTunerLayer, _as_list

__all__ = [
    "BASE_ADAPTER_NAME",
    "BasePromptEncoder",
    "BaseTuner",
    "BaseTunerLayer",
    "NoMatchingPeftModuleError",
    "cast_adapter_dtype",
    "check_adapters_to_merge",
    "check_target_module_exists",
    "clone_module",
    "delete_adapter",
    "find_parameter_name_by_module",
    "get_device_map",
    "inspect_matched_modules",
    "onload_layer",
    "replicate_layers",  # noqa: F822  (resolved by __getattr__)
    "set_adapter",
    "set_adapter_trainable",
    "set_requires_grad",
    "warn_msg_weight_tying",
]

# LoRA's layer_replication lives with LoRA, a floor above this one (see `lazy_exports`)
__getattr__, __dir__ = lazy_exports(globals(), {"replicate_layers": "peftkit.tuners.lora.layer_replication"})

# Tuner methods that only some methods have; asking another tuner for them names the method in the error.
_TUNER_ONLY_METHODS = ("add_weighted_adapter",)


def check_adapters_not_merged(model: nn.Module, adapter_names: str | Iterable[str]) -> None:
    """Refuse to delete adapters that are merged: their delta would stay in the base weights with nothing
    left to take it out."""
    wanted = set(_as_list(adapter_names))
    merged = sorted(
        {name for m in model.modules() if isinstance(m, BaseTunerLayer) for name in m.merged_adapters}
        & wanted
    )
    if merged:
        raise ValueError(
            f"Cannot delete adapter(s) {merged} while they are merged into the base weights: call "
            "unmerge_adapter() first (or merge_and_unload() to keep their effect in a plain model)."
        )


class BaseTuner(nn.Module):
    """Wraps a model and adapts the modules an adapter config targets.

    A method subclass sets `prefix` (the start of its parameter names, e.g. "lora_"), `tuner_layer_cls`,
    `layer_classes` (base-layer type -> its layer class, see `_dispatch`) and implements `_layer_kwargs`;
    its default targets per `model_type` are given to `register_peft_method`. Everything else is shared.
    """

    prefix: str = ""
    tuner_layer_cls: type[BaseTunerLayer] = BaseTunerLayer
    layer_classes: LayerClasses = {}
    layer_dispatchers: tuple[LayerDispatcher, ...] = ()
    # True when the tuner itself holds adapter state its layers share (PEFT's name): such a method needs
    # its tuner, so `inject_adapter_in_model`, which drops the tuner, refuses it
    uses_shared_state: bool = False
    # Containers this tuner holds and every one of its layers references under the same attribute name
    # (VB-LoRA's vector bank, TinyLoRA's vectors): the layers' copies of their keys are not adapter keys,
    # the tuner's own are saved once (`_tuner_state_keys`).
    shared_state_names: tuple[str, ...] = ()
    # True when the tuner's `forward`/`generate` take `task_ids` (Poly routes each sample by its task):
    # PeftModel's task classes then hand `task_ids` to the tuner instead of dropping it
    takes_task_ids: bool = False
    # False: a config whose `fan_in_fan_out` does not fit an nn.Linear/Conv1D target is corrected (and saved
    # corrected), as PEFT's LoRA does; True: only the layer gets the corrected value, the config keeps the
    # user's (as PEFT's HiRA does, so the saved adapter_config.json is PEFT's)
    keeps_config_fan_in_fan_out: bool = False
    # The quantization backends (`_quantized.QuantizationBackend.family`) whose layers this method adapts;
    # a target quantized by another one is refused by name (`_dispatch.create_layer`)
    quantization_backends: tuple[str, ...] = ("bitsandbytes",)

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
            **({} if state_dict is None else {"state_dict": state_dict}),
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
    def _create_new_module(
        self, config: PeftConfig, adapter_name: str, target: nn.Module, /, **kwargs: Any
    ) -> nn.Module:
        """The adapter layer for `target`, picked by the declared dispatch of `config`'s method (its
        `layer_dispatchers`, then its `layer_classes`; see `_dispatch.create_layer`). The first arguments
        are positional-only: a layer argument may itself be called `config`."""
        return create_layer(self._method_for(config), config, adapter_name, target, kwargs)

    def _layer_kwargs(self, config: PeftConfig, key: str) -> dict[str, Any]:
        """The per-module keyword arguments for `update_layer` (e.g. rank from rank_pattern)."""
        raise NotImplementedError

    def _check_new_adapter_config(self, config: PeftConfig) -> None:
        """Reject a config that cannot live beside the adapters already present.

        Trainable base biases (`bias="all"` / `"<method>_only"`) are shared by every adapter, so at most one
        adapter may ask for them.
        """
        with_bias = [c for c in self.peft_config.values() if getattr(c, "bias", "none") != "none"]
        if len(with_bias) > 1:
            raise ValueError(
                f"{type(self).__name__} supports only 1 adapter with bias. When using multiple adapters, set bias "
                "to 'none' for all adapters."
            )

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

    def _may_be_empty(self, file_key: str, adapter_name: str) -> bool:
        """Whether the saved tensor `file_key` of `adapter_name` is empty by design (FRoD's sparse values
        where a layer has no sparse entries). Saving refuses any other 1-D empty tensor: it would be a
        shard (FSDP/ZeRO-3) that was not gathered. False by default."""
        return False

    def _adapter_tensors_from_file(
        self, tensors: dict[str, torch.Tensor], adapter_name: str
    ) -> dict[str, torch.Tensor]:
        """The inverse of `_adapter_tensors_to_save`: the file's tensors of `adapter_name` (file keys) as the
        model holds them (VB-LoRA rebuilds its logits from the saved top-k). Identity by default."""
        return tensors

    @classmethod
    def _config_for_weights(cls, config: PeftConfig, tensors: dict[str, torch.Tensor]) -> PeftConfig:
        """The config to build a loaded adapter with, given the tensors of its file (file keys), before the
        adapter is created: a method whose files can hold other shapes than their config says adjusts it
        here, with a warning (BOFT files peft wrote with fewer butterfly factors). Identity by default."""
        return config

    def _adapter_config_to_save(self, config: PeftConfig, adapter_name: str) -> PeftConfig:
        """Adjust the copy of `adapter_name`'s config that is written beside its weights (AdaLoRA names its
        layers in `rank_pattern` without the adapter name). Identity by default."""
        return config

    def _method_for(self, config: PeftConfig) -> type[BaseTuner]:
        """The tuner class whose layer rules (`_layer_kwargs`, `layer_classes`, `layer_dispatchers`,
        `tuner_layer_cls`) apply to `config`: this tuner's own class, or, in a mixed model, the class of
        `config`'s method."""
        return type(self)

    def _prepare_adapter_config(self, config: PeftConfig, model_config: dict) -> PeftConfig:
        if config.target_modules is None:
            model_type = model_config.get("model_type")
            mapping = default_target_modules(config.peft_type)
            if model_type not in mapping:
                if getattr(config, "target_parameters", None):
                    return config  # the adapter targets parameters only; no module is matched (as in PEFT)
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

    @gc_paused()  # building hundreds of modules would trigger full collections over the whole model
    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        state_dict: dict | None = None,
    ) -> None:
        """Create adapter `adapter_name` (its config already in `self.peft_config`) in every targeted module.

        With `state_dict` (adapter tensors keyed as in the model, e.g. from a checkpoint saved without its
        config), the modules its keys name are adapted instead of those `target_modules` selects; only
        the keys are read. A warning lists where the two disagree.
        """
        config = self.peft_config[adapter_name]
        self._check_new_adapter_config(config)
        # initialisations that read the base weights (DoRA magnitudes, PiSSA/OLoRA/EVA...) must see the original
        self._undo_merges(f"adding adapter '{adapter_name}'")
        config = self._prepare_adapter_config(config, self.get_model_config(model))
        modules_to_save = list(getattr(config, "modules_to_save", None) or [])
        modules = modules_outside_adapters(model)
        expanded = expand_all_linear(config, model, modules, excluded_names=modules_to_save)
        warn_if_regex_in_list(config.target_modules)

        matched = [key for key, _ in modules if is_targeted(config, key)]
        if state_dict is not None:
            matched = modules_named_in_state_dict(
                config, adapter_name, state_dict, self._method_for(config).prefix, modules, matched
            )
        matched = drop_attention_output_projections(matched, modules, adapter_name)
        # As in PEFT, a module listed in modules_to_save is fully trained and never adapted as well.
        fully_trained = [k for k in matched if any(k == n or k.endswith("." + n) for n in modules_to_save)]
        matched = [k for k in matched if k not in fully_trained]
        if fully_trained and matched:
            warnings.warn(
                f"target_modules of adapter '{adapter_name}' also match {fully_trained}, which modules_to_save "
                "trains fully: they are not adapted (as in PEFT). Leave them out of target_modules to silence this.",
                PeftWarning,
            )
        # a method may target parameters instead of modules (LoRA's target_parameters); it checks those itself
        if not matched and not getattr(config, "target_parameters", None):
            if fully_trained:
                raise ValueError(
                    f"target_modules of adapter '{adapter_name}' match only modules that modules_to_save trains "
                    f"fully ({fully_trained}), so nothing would be adapted: a module is either fully trained "
                    "(modules_to_save) or adapted. Remove it from one of them."
                )
            raise no_match_error(config, model)
        wrapped = [k for k, m in modules if k in matched and isinstance(m, ModulesToSaveWrapper)]
        if wrapped:
            raise ValueError(
                f"{wrapped} are fully trained by another adapter's modules_to_save and cannot be adapted too; "
                "leave them out of target_modules."
            )
        check_mamba_targets(config, model, matched)
        try:
            self._pre_injection_hook(model, config, adapter_name, matched)
            by_name = dict(modules)  # parents by name: get_submodule per target walks the path each time
            with _meta_init(low_cpu_mem_usage):
                for key in matched:
                    parent_name, _, target_name = key.rpartition(".")
                    parent = (
                        by_name[parent_name] if parent_name in by_name else model.get_submodule(parent_name)
                    )
                    self._create_and_replace(
                        config,
                        adapter_name,
                        getattr(parent, target_name),
                        target_name,
                        parent,
                        current_key=key,
                    )
                    by_name[key] = getattr(parent, target_name)  # the adapter layer now stands there
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
        warn_about_tied_weights(modules, matched, saved, expected=self._expected_tie)

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

    def _expected_tie(self, name: str, others: list[str]) -> bool:
        """True when module `name` shares its weight with `others` by design of this method, so the
        tied-weights warning would be a false alarm (none by default)."""
        return False

    def _remove_partial_adapter(self, model: nn.Module, adapter_name: str) -> None:
        """Undo a failed injection: drop `adapter_name` everywhere, unwrap layers left without adapters."""
        # innermost first: a layer nested in another's base layer is unwrapped before its holder
        for key, module in reversed(list(model.named_modules())):
            if isinstance(module, BaseTunerLayer) and adapter_name in module._get_available_adapters():
                module.delete_adapter(adapter_name)
                if not module._get_available_adapters():
                    parent, _, name = get_submodules(model, key)
                    setattr(parent, name, module._unloaded_base_layer())

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
                base = module.get_base_layer()
                base.requires_grad_(False)
                for (
                    inner
                ) in base.modules():  # adapter layers nested in the base (MultiheadAttention's out_proj)
                    if isinstance(inner, BaseTunerLayer):
                        inner.set_adapter(inner.active_adapter)
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
        self._undo_merges("switching adapters")
        for module in self.model.modules():
            if isinstance(module, (BaseTunerLayer, ModulesToSaveWrapper)):
                module.set_adapter(adapter_name, inference_mode=inference_mode)
        self.active_adapter = adapter_name

    def merged_adapter_names(self) -> list[str]:
        """The adapters merged into the base weights of at least one layer, sorted."""
        return sorted({name for module in self._tuner_layers(self.model) for name in module.merged_adapters})

    def _undo_merges(self, operation: str) -> None:
        """Take every merged adapter out of the base weights before `operation`, saying so: the operation
        then acts on the model as it would after `unmerge_adapter()` (the rule for merged adapters)."""
        merged = self.merged_adapter_names()
        if not merged:
            return
        warnings.warn(
            f"Adapter(s) {merged} are merged into the base weights; unmerging them before {operation}. Call "
            "unmerge_adapter() first to silence this, and merge_adapter() after to merge again.",
            PeftWarning,
            stacklevel=3,
        )
        for module in self._tuner_layers(self.model):  # outermost first, as unmerge_adapter
            if module.merged:
                module.unmerge()

    def _set_adapter_layers(self, enabled: bool) -> None:
        for module in self.model.modules():
            if isinstance(module, (BaseTunerLayer, ModulesToSaveWrapper)):
                module.enable_adapters(enabled)

    def enable_adapter_layers(self) -> None:
        """Turn every adapter back on."""
        self._set_adapter_layers(True)

    def disable_adapter_layers(self) -> None:
        """Turn every adapter off: the model computes the base model's outputs (merged adapters are
        unmerged first, so the base weights are the original ones)."""
        self._undo_merges("disabling the adapters")
        self._set_adapter_layers(False)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove `adapter_name` from every layer and from `peft_config`."""
        if adapter_name not in self.peft_config:
            raise ValueError(f"Adapter {adapter_name} does not exist; available: {sorted(self.peft_config)}.")
        check_adapters_not_merged(self.model, adapter_name)
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

    def set_requires_grad(self, adapter_names: str | Iterable[str], requires_grad: bool = True) -> None:
        """Turn gradients on or off for the tensors of `adapter_names` (see `set_requires_grad`)."""
        set_requires_grad(self.model, adapter_names=adapter_names, requires_grad=requires_grad)

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        """Whether every adapter layer can write adapter `adapter_name` as a LoRA adapter (`convert_to_lora`)."""
        return all(layer.supports_lora_conversion(adapter_name) for layer in self._tuner_layers(self.model))

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        """Merge the active (or the named) adapters into the base weights, keeping the adapter layers.

        Nested layers (mixed models) merge innermost first; `unmerge_adapter` undoes them outermost first.
        """
        for module in reversed(list(self._tuner_layers(self.model))):
            module.merge(safe_merge=safe_merge, adapter_names=adapter_names)

    def unmerge_adapter(self) -> None:
        """Take every merged adapter back out of the base weights (a warning, as in PEFT, when none is)."""
        merged_layers = [module for module in self._tuner_layers(self.model) if module.merged]
        if not merged_layers:
            warnings.warn("Already unmerged. Nothing to do.", PeftWarning)
        for module in merged_layers:
            if module.merged:  # a layer may unmerge the layers nested in it (LoRA on MultiheadAttention)
                module.unmerge()

    def merge_and_unload(
        self, progressbar: bool = False, safe_merge: bool = False, adapter_names: list[str] | None = None
    ) -> nn.Module:
        """Merge the adapters into the base weights and return the plain base model (no adapter layers)."""
        return self._unload_and_optionally_merge(True, progressbar, safe_merge, adapter_names)

    def unload(self) -> nn.Module:
        """Return the original base model: every adapter layer removed, merged adapters unmerged first
        (with a warning) so that no adapter's delta stays in the weights."""
        self._undo_merges("unloading")
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
        keys = [k for k in keys if not has_ancestor_in(k, set(keys))]
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
                replacement = target._unloaded_base_layer()
            else:
                replacement = target.unwrapped_module()
            setattr(parent, target_name, replacement)
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config
        return self.model

    def get_nb_adapter_layers(self) -> int:
        return sum(1 for _ in self._tuner_layers(self.model))


@contextmanager
def _meta_init(enabled: bool) -> Iterator[None]:
    """With `enabled`, new adapter tensors are created on the meta device (filled later from a file)."""
    if not enabled:
        yield
        return
    with torch.device("meta"):
        yield


def set_adapter_trainable(model: nn.Module, adapter_name: str, trainable: bool) -> None:
    """Set `requires_grad` of every tensor of `adapter_name` (adapter layers and modules_to_save copies)."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            for tensor in module._adapter_tensors(adapter_name):
                if isinstance(tensor, nn.Parameter) and tensor.is_floating_point():
                    tensor.requires_grad_(trainable)
            if trainable:
                module._freeze_non_trainable_peft_weights([adapter_name])
        elif isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
            module.modules_to_save[adapter_name].requires_grad_(trainable)


def set_requires_grad(
    model: nn.Module, adapter_names: str | Iterable[str], requires_grad: bool = True
) -> None:
    """Turn gradients on or off for the tensors of `adapter_names` in every adapter layer and
    `modules_to_save` copy of `model`; which adapters are active is left alone."""
    for module in model.modules():
        if isinstance(module, (BaseTunerLayer, ModulesToSaveWrapper)):
            module.set_requires_grad(adapter_names=adapter_names, requires_grad=requires_grad)


def check_target_module_exists(config: PeftConfig, key: str) -> bool:
    """Whether module `key` is targeted by `config` (PEFT's name for `is_targeted`)."""
    return is_targeted(config, key)
