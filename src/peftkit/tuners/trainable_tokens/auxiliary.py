"""peft's functions that add the modules trained beside an adapter: `modules_to_save` copies and trainable
tokens (`_set_trainable`, `set_additional_trainable_modules`), and `_set_adapter` for their wrappers.
The adapters' own injection uses the same machinery (`set_modules_to_save`, `inject_trainable_tokens`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ...utils.auxiliary_wrapper import AuxiliaryTrainingWrapper
from ...utils.modules_to_save import ModulesToSaveWrapper, set_modules_to_save
from ...utils.other import _get_input_embeddings_name
from .wrapper import TrainableTokensWrapper, inject_trainable_tokens


def _set_adapter(model: nn.Module, adapter_name: str | list[str], inference_mode: bool = False) -> None:
    """Activate `adapter_name` in every `modules_to_save` and trainable-tokens wrapper of `model`; a wrapper
    without that adapter computes with the original module."""
    names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            module.set_adapter([n for n in names if n in module.modules_to_save][:1], inference_mode)
        elif isinstance(module, TrainableTokensWrapper):
            module.token_adapter.set_adapter(names, inference_mode=inference_mode)


def _set_trainable(
    model: nn.Module,
    adapter_name: str,
    module_names: list[str] | None,
    inference_mode: bool,
    strict_module_check: bool = False,
    wrapper_cls: type[AuxiliaryTrainingWrapper] | None = None,
    activate_adapter: bool = True,
    **wrapper_kwargs: Any,
) -> None:
    """Train the modules named by `module_names` (names or dotted suffixes) for `adapter_name`: a full copy
    each (`ModulesToSaveWrapper`, the default), or some embedding rows (`TrainableTokensWrapper`, with
    `token_indices=`). With `strict_module_check`, a name that matches nothing is an error."""
    if not module_names:
        return
    wrapper_cls = wrapper_cls or ModulesToSaveWrapper
    if wrapper_cls is TrainableTokensWrapper:
        indices = {name: list(wrapper_kwargs.pop("token_indices")) for name in module_names}
        active = [adapter_name] if activate_adapter else []
        wrapped = [name for name in module_names if _named_in(model, name)]
        _check_found(module_names, wrapped, strict_module_check)
        inject_trainable_tokens(model, adapter_name, {n: indices[n] for n in wrapped}, active, inference_mode)
    elif wrapper_cls is ModulesToSaveWrapper:
        if wrapper_kwargs:
            raise TypeError(f"ModulesToSaveWrapper takes no options, got {sorted(wrapper_kwargs)}.")
        wrapped = set_modules_to_save(model, adapter_name, module_names)
        _check_found(module_names, wrapped, strict_module_check)
        for name in wrapped:
            wrapper = model.get_submodule(name)
            active = adapter_name if activate_adapter else wrapper.active_adapters[:1]
            wrapper.set_adapter(active, inference_mode=inference_mode)
    else:
        raise TypeError(
            f"wrapper_cls must be ModulesToSaveWrapper or TrainableTokensWrapper, got {wrapper_cls!r}."
        )


def _named_in(model: nn.Module, suffix: str) -> bool:
    return any(key == suffix or key.endswith("." + suffix) for key, _ in model.named_modules())


def _check_found(module_names: list[str], wrapped: list[str], strict: bool) -> None:
    missing = [n for n in module_names if not any(k == n or k.endswith("." + n) for k in wrapped)]
    if strict and missing:
        raise ValueError(
            f"Target modules {missing} not found in the base model. Please check the target modules."
        )


def set_additional_trainable_modules(
    model: nn.Module, peft_config: Any, model_config: Any, adapter_name: str, activate_adapter: bool = True
) -> None:
    """Add what `peft_config` trains beside its adapter layers for `adapter_name`: its `modules_to_save`
    and its `trainable_token_indices` (a list: rows of the input embedding; a dict: per module name)."""
    modules_to_save = getattr(peft_config, "modules_to_save", None)
    inference_mode = peft_config.inference_mode
    if modules_to_save is not None:
        _set_trainable(
            model, adapter_name, modules_to_save, inference_mode, activate_adapter=activate_adapter
        )
    indices = getattr(peft_config, "trainable_token_indices", None)
    if indices is None:
        return
    if not isinstance(indices, dict):
        indices = {_get_input_embeddings_name(model, "embed_tokens"): indices}
    both = [name for name in indices if modules_to_save and name in modules_to_save]
    if both:
        raise ValueError(
            "The embedding layer is already marked to be trained fully, either specify "
            f"`modules_to_save=[..., \"{both[0]}\", ...]` or `trainable_tokens={{'{both[0]}': x}}` but not both."
        )
    active = [adapter_name] if activate_adapter else []
    inject_trainable_tokens(model, adapter_name, indices, active, inference_mode)
