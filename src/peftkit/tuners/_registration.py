"""`register_peft_method`: the one call that makes a method known, after checking what it declares.

A method's package calls it once, e.g. in `tuners/lora/__init__.py` (inside peftkit it is imported from
here, not from `peftkit.mapping`, which imports the methods):

    register_peft_method(
        name="lora",
        config_cls=LoraConfig,
        model_cls=LoraModel,
        is_mixed_compatible=True,
        default_target_modules=TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
    )

The parameter prefix is read from the tuner class (`LoraModel.prefix`); the call fills the tables of
`_registry` that the rest of peftkit reads (configs by type, tuners, prefixes, the mixed-model list and
the default targets). Every inconsistency raises a ValueError that names the problem and the fix.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..config import PeftConfig, PromptLearningConfig
from ..utils.peft_types import PeftType
from ._dispatch import check_layer_classes
from ._registry import (
    MIXED_MODEL_TYPES,
    PEFT_TYPE_TO_CONFIG_MAPPING,
    PEFT_TYPE_TO_DEFAULT_TARGET_MODULES,
    PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
    PEFT_TYPE_TO_PREFIX_MAPPING,
    PEFT_TYPE_TO_TUNER_MAPPING,
)
from .tuners_utils import BaseTuner


def register_peft_method(
    *,
    name: str,
    config_cls: type[PeftConfig],
    model_cls: type | None,
    prefix: str | None = None,
    is_mixed_compatible: bool = False,
    default_target_modules: Mapping[str, Any] | None = None,
    mixed_model_support: bool | None = None,
) -> None:
    """Make the method `name` (its PeftType in lower case, e.g. "lora") known to peftkit.

    model_cls: the method's `BaseTuner` subclass; None for a prompt-learning method (PeftModel builds its
        encoder), or another module class for a method that wraps the model its own way (adaption prompt).
    prefix: the start of the method's parameter names. Read from `model_cls.prefix`; when given as well
        (peft's signature has it) it must be the same.
    is_mixed_compatible: whether the method is listed in `PEFT_TYPE_TO_MIXED_MODEL_MAPPING` (peft's meaning).
    mixed_model_support: whether a PeftMixedModel accepts the method's adapters; by default the same as
        `is_mixed_compatible`. PEFT 0.21's two lists differ (its mapping names IA3, BEFT, HiRA and RoAd, which
        its mixed model refuses, and not OFT, which it accepts); peftkit keeps both as PEFT has them.
    default_target_modules: model_type -> module names (or one regex) targeted when a config leaves
        `target_modules` unset.

    Registering the same method again with the same arguments does nothing; anything else that clashes
    with a registered method raises a ValueError.
    """
    peft_type = _peft_type_of(name)
    _check_config_cls(config_cls, peft_type)
    is_tuner = isinstance(model_cls, type) and issubclass(model_cls, BaseTuner)
    mixable = is_mixed_compatible if mixed_model_support is None else mixed_model_support
    _check_model_cls(model_cls, config_cls, is_tuner, is_mixed_compatible or mixable, default_target_modules)
    if is_tuner:
        prefix = _tuner_prefix(model_cls, prefix)
    if prefix is not None:
        _check_prefix(prefix, f"prefix {prefix!r}")
    targets = _checked_targets(default_target_modules)
    entry = (config_cls, model_cls, prefix, bool(is_mixed_compatible), bool(mixable), targets)
    if peft_type in PEFT_TYPE_TO_CONFIG_MAPPING:
        if entry == _registered_entry(peft_type):
            return  # the same registration again (a module imported twice): nothing changes
        raise ValueError(
            f"PeftType.{peft_type.name} is already registered, with {PEFT_TYPE_TO_CONFIG_MAPPING[peft_type].__name__} "
            f"and {_class_name(PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type))}; a different method needs its own "
            "PeftType entry (add one to peftkit.utils.peft_types.PeftType)."
        )
    _check_unique(peft_type, config_cls, model_cls, prefix)
    PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
    if model_cls is not None:
        PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = model_cls
    if prefix is not None:
        PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = prefix
    if is_mixed_compatible:
        PEFT_TYPE_TO_MIXED_MODEL_MAPPING[peft_type] = model_cls
    if mixable:
        MIXED_MODEL_TYPES.append(peft_type)
    if targets is not None:
        PEFT_TYPE_TO_DEFAULT_TARGET_MODULES[peft_type] = targets


def _class_name(cls: type | None) -> str:
    return "no model class" if cls is None else cls.__name__


def _registered_entry(peft_type: PeftType) -> tuple:
    return (
        PEFT_TYPE_TO_CONFIG_MAPPING[peft_type],
        PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type),
        PEFT_TYPE_TO_PREFIX_MAPPING.get(peft_type),
        peft_type in PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
        peft_type in MIXED_MODEL_TYPES,
        PEFT_TYPE_TO_DEFAULT_TARGET_MODULES.get(peft_type),
    )


def _peft_type_of(name: Any) -> PeftType:
    """The PeftType `name` spells in lower case (peft's convention: "lora" for PeftType.LORA)."""
    if not isinstance(name, str) or not name or name != name.lower() or name.endswith("_"):
        raise ValueError(
            f"register_peft_method(name={name!r}): name must be the method's PeftType in lower case without a "
            "trailing '_', e.g. name='lora'."
        )
    try:
        return PeftType(name.upper())
    except ValueError:
        raise ValueError(
            f"register_peft_method(name={name!r}): there is no PeftType.{name.upper()}; add it to "
            "peftkit.utils.peft_types.PeftType first."
        ) from None


def _check_config_cls(config_cls: Any, peft_type: PeftType) -> None:
    """`config_cls` is a PeftConfig subclass whose instances say they are `peft_type`."""
    if not (isinstance(config_cls, type) and issubclass(config_cls, PeftConfig)):
        raise ValueError(
            f"register_peft_method(name={peft_type.value.lower()!r}): config_cls={config_cls!r} is not a "
            "PeftConfig subclass; pass the method's config class."
        )
    try:
        # the defaults' own warnings (X-LoRA's missing hidden_size) are no news here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = config_cls()
    except (TypeError, ValueError):
        return  # its defaults do not make a valid config (AdaLoRA needs total_step): nothing to compare
    if built.peft_type != peft_type:
        raise ValueError(
            f"register_peft_method(name={peft_type.value.lower()!r}): {config_cls.__name__}() has peft_type "
            f"{built.peft_type!r}, not PeftType.{peft_type.name}; set `self.peft_type = PeftType.{peft_type.name}` "
            "in its __post_init__, or register it under its own name."
        )


def _check_model_cls(
    model_cls: Any,
    config_cls: type[PeftConfig],
    is_tuner: bool,
    is_mixed_compatible: bool,
    default_target_modules: Mapping[str, Any] | None,
) -> None:
    """A layer method brings a BaseTuner subclass with a valid layer dispatch; only such a method can be
    mixed or have default targets."""
    if is_tuner:
        if model_cls._create_new_module is BaseTuner._create_new_module:  # the framework's dispatch
            check_layer_classes(model_cls)
        return
    if model_cls is None and not issubclass(config_cls, PromptLearningConfig):
        raise ValueError(
            f"register_peft_method: model_cls=None is only for prompt-learning methods, and "
            f"{config_cls.__name__} is not a PromptLearningConfig; pass the method's BaseTuner subclass."
        )
    if model_cls is not None and not (isinstance(model_cls, type) and issubclass(model_cls, nn.Module)):
        raise ValueError(
            f"register_peft_method: model_cls={model_cls!r} is not a class; pass the method's BaseTuner "
            "subclass (from peftkit.tuners.tuners_utils)."
        )
    if is_mixed_compatible or default_target_modules is not None:
        raise ValueError(
            f"register_peft_method: {_class_name(model_cls)} is not a BaseTuner subclass, so it adapts no layers "
            "and can have neither is_mixed_compatible=True nor default_target_modules; subclass BaseTuner "
            "or leave both unset."
        )


def _tuner_prefix(model_cls: type[BaseTuner], prefix: str | None) -> str:
    """The tuner's `prefix` class attribute, checked (and equal to an explicitly given `prefix`)."""
    own = model_cls.prefix
    _check_prefix(own, f"{model_cls.__name__}.prefix = {own!r}")
    if prefix is not None and prefix != own:
        raise ValueError(
            f"register_peft_method: prefix={prefix!r} differs from {model_cls.__name__}.prefix = {own!r}; the "
            "prefix is read from the tuner class, so leave prefix unset (or pass the same value)."
        )
    return own


def _check_prefix(prefix: Any, what: str) -> None:
    if not isinstance(prefix, str) or not prefix or not prefix.endswith("_"):
        raise ValueError(
            f"register_peft_method: {what} is not a valid parameter prefix; it must be a non-empty string ending "
            "with '_' (e.g. 'lora_'), the start of the names of the method's adapter tensors."
        )


def _checked_targets(default_target_modules: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """`default_target_modules` after checking it maps model_type strings to names or one regex string."""
    if default_target_modules is None:
        return None
    if not isinstance(default_target_modules, Mapping):
        raise ValueError(
            f"register_peft_method: default_target_modules must map model_type to module names, got "
            f"{type(default_target_modules).__name__}; pass e.g. {{'llama': ['q_proj', 'v_proj']}}."
        )
    for model_type, targets in default_target_modules.items():
        names_ok = isinstance(targets, (list, tuple, set, frozenset)) and all(
            isinstance(t, str) for t in targets
        )
        if not isinstance(model_type, str) or not (isinstance(targets, str) or names_ok):
            raise ValueError(
                f"register_peft_method: default_target_modules[{model_type!r}] = {targets!r} is not a list of "
                "module names or one regex string; give each model_type (a string) its names."
            )
    return default_target_modules


def _check_unique(
    peft_type: PeftType, config_cls: type[PeftConfig], model_cls: type | None, prefix: str | None
) -> None:
    """No other method has this config class, tuner class or prefix (a tuner built on another, like
    AdaLoRA on LoRA, shares that one's prefix: its tensors have the same names)."""
    for other, other_config in PEFT_TYPE_TO_CONFIG_MAPPING.items():
        other_model = PEFT_TYPE_TO_TUNER_MAPPING.get(other)
        if other_config is config_cls or (model_cls is not None and other_model is model_cls):
            raise ValueError(
                f"register_peft_method(name={peft_type.value.lower()!r}): {config_cls.__name__}/"
                f"{_class_name(model_cls)} are already registered for PeftType.{other.name}; each method "
                "needs its own config and model classes (subclass them)."
            )
    owners = [t for t, p in PEFT_TYPE_TO_PREFIX_MAPPING.items() if prefix is not None and p == prefix]
    if owners and not any(_related(model_cls, PEFT_TYPE_TO_TUNER_MAPPING.get(t)) for t in owners):
        raise ValueError(
            f"register_peft_method(name={peft_type.value.lower()!r}): prefix {prefix!r} is already used by "
            f"PeftType.{owners[0].name}; choose a prefix of its own for {_class_name(model_cls)}.prefix."
        )


def _related(a: type | None, b: type | None) -> bool:
    """Whether one of two tuner classes is built on (subclasses) the other."""
    return a is not None and b is not None and (issubclass(a, b) or issubclass(b, a))
