"""Which modules of a model an adapter config targets.

Rules (the same as PEFT's): a string `target_modules` is a regex that must match the whole module name;
a list entry matches a name exactly or as its last dotted parts (`"q_proj"` matches
`model.layers.0.self_attn.q_proj`). `exclude_modules` follows the same two rules and wins over targets.
`layers_to_transform` keeps only modules inside the listed layer indices, the index being the number
after a `.<layers_pattern>.` segment (any segment when no pattern is given).
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Iterable
from typing import Any

from torch import nn

from ..config import PeftConfig
from ..utils.constants import INCLUDE_LINEAR_LAYERS_SHORTHAND
from ..utils.modules_to_save import ModulesToSaveWrapper
from ..utils.warnings import NoMatchingPeftModuleError, PeftWarning
from ._tuner_layer import BaseTunerLayer

_REGEX_CHARS = re.compile(r"[\\^$*+?{}\[\]|()]")


def matches_name(patterns: str | Iterable[str] | None, key: str) -> bool:
    """True when `key` is matched by a regex string or a list of exact names / dotted suffixes."""
    if patterns is None:
        return False
    if isinstance(patterns, str):
        return re.fullmatch(patterns, key) is not None
    return any(key == p or key.endswith("." + p) for p in patterns)


def layer_index(key: str, layers_pattern: str | list[str] | None) -> int | None:
    """The layer number of module `key` (e.g. 3 for `model.layers.3.mlp`), or None if it has none."""
    patterns = [layers_pattern] if isinstance(layers_pattern, str) else (layers_pattern or [])
    regexes = [rf".*\.(?:{p})\.(\d+)\." for p in patterns] or [r".*\.[^.]*\.(\d+)\."]
    for regex in regexes:
        found = re.match(regex, key)
        if found:
            return int(found.group(1))
    return None


def is_targeted(config, key: str) -> bool:
    """Whether the module named `key` is adapted under `config`."""
    if matches_name(getattr(config, "exclude_modules", None), key):
        return False
    if not matches_name(config.target_modules, key):
        return False
    layers = getattr(config, "layers_to_transform", None)
    if layers is None:
        return True
    index = layer_index(key, getattr(config, "layers_pattern", None))
    wanted = [layers] if isinstance(layers, int) else layers
    return index is not None and index in wanted


def linear_like_types() -> tuple[type, ...]:
    """Layer types that count as "linear" for the `all-linear` shorthand."""
    from transformers.pytorch_utils import Conv1D

    # bitsandbytes' Linear4bit and Linear8bitLt subclass nn.Linear, so quantized models are covered
    # without importing bitsandbytes (slow, and noisy on CPU) for every "all-linear" config
    return (nn.Linear, Conv1D)


def modules_outside_adapters(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) in `named_modules` order, not descending into adapter layers or modules_to_save
    wrappers (they are listed themselves): nothing inside them is ever a target."""
    stop = (BaseTunerLayer, ModulesToSaveWrapper)
    found: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()

    def walk(prefix: str, module: nn.Module) -> None:
        for name, child in module._modules.items():
            if child is None or id(child) in seen:
                continue
            seen.add(id(child))
            full = f"{prefix}.{name}" if prefix else name
            found.append((full, child))
            if not isinstance(child, stop):
                walk(full, child)

    walk("", model)
    return found


def expand_all_linear(
    config, model: nn.Module, modules: list[tuple[str, nn.Module]], excluded_names: Iterable[str] = ()
) -> bool:
    """Replace `target_modules="all-linear"` by the names of the model's linear layers; True if it did.

    The output head (`get_output_embeddings()`) and modules named in `excluded_names` (e.g.
    modules_to_save heads) are left out; layers already adapted are kept (a further adapter goes on them).
    """
    targets = config.target_modules
    if not (isinstance(targets, str) and targets.lower() == INCLUDE_LINEAR_LAYERS_SHORTHAND):
        return False

    output_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    excluded = list(excluded_names)
    linear_types = linear_like_types()
    names: set[str] = set()
    for name, module in modules:
        base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
        if base is output_head or module is output_head or matches_name(excluded, name):
            continue
        if isinstance(base, linear_types):
            names.add(name)
    if len(names) >= MIN_TARGETS_TO_SHORTEN:
        names = shortest_unique_suffixes(names, [n for n, _ in modules])
    config.target_modules = names
    return True


# From this many expanded targets on, the config stores short suffixes instead of full names (as PEFT
# does), which keeps adapter_config.json readable for deep models.
MIN_TARGETS_TO_SHORTEN = 20


def shortest_unique_suffixes(targets: set[str], all_names: list[str]) -> set[str]:
    """The shortest dotted suffixes that match exactly the `targets` among `all_names`."""
    others = set(all_names) - set(targets)
    taken: set[str] = set()
    for name in others:
        parts = name.split(".")
        taken.update(".".join(parts[i:]) for i in range(len(parts)))
    result: set[str] = set()
    for name in targets:
        parts = name.split(".")
        result.add(
            next(
                (
                    ".".join(parts[i:])
                    for i in range(len(parts) - 1, -1, -1)
                    if ".".join(parts[i:]) not in taken
                ),
                name,
            )
        )
    return result


def warn_if_regex_in_list(target_modules) -> None:
    """A list entry that looks like a regex is almost always a mistake: lists match exactly."""
    if isinstance(target_modules, str) or target_modules is None:
        return
    suspicious = sorted(t for t in target_modules if _REGEX_CHARS.search(t))
    if suspicious:
        warnings.warn(
            f"target_modules entries {suspicious} look like regular expressions, but a list matches module "
            "names exactly or by their last dotted parts. Pass a single string to match by regex.",
            PeftWarning,
            stacklevel=4,
        )


def unmatched_list_entries(target_modules, matched_keys: list[str]) -> list[str]:
    """The list entries of `target_modules` that matched no module (empty for a regex string)."""
    if isinstance(target_modules, str) or target_modules is None:
        return []
    return sorted(t for t in target_modules if not any(k == t or k.endswith("." + t) for k in matched_keys))


def no_match_error(config, model: nn.Module) -> NoMatchingPeftModuleError:
    """The error for a config whose targets match nothing, listing the closest module names and types."""
    modules = {name: type(mod).__name__ for name, mod in model.named_modules() if name}
    suffixes: dict[str, str] = {}
    for name, kind in modules.items():
        suffixes.setdefault(name.rsplit(".", 1)[-1], kind)
    targets = config.target_modules
    wanted = [targets] if isinstance(targets, str) else sorted(targets or [])
    close: list[str] = []
    for target in wanted:
        for cand in difflib.get_close_matches(target.rsplit(".", 1)[-1], list(suffixes), n=5, cutoff=0.4):
            if cand not in close:
                close.append(cand)
    leaf_kinds = {s: k for s, k in suffixes.items() if not any(n.startswith(s + ".") for n in modules)}
    listing = ", ".join(f"{s} ({leaf_kinds.get(s, suffixes[s])})" for s in (close or list(leaf_kinds)[:20]))
    extra = ""
    if getattr(config, "layers_to_transform", None) is not None:
        extra = f" with layers_to_transform={config.layers_to_transform} and layers_pattern={config.layers_pattern}"
    if getattr(config, "exclude_modules", None):
        extra += f" after exclude_modules={config.exclude_modules}"
    return NoMatchingPeftModuleError(
        f"Target modules {wanted} not found in the base model{extra}. "
        f"{'Closest' if close else 'Some'} available module names (type): {listing}. "
        "Fix target_modules to name existing modules (exact name, dotted suffix, or one regex string)."
    )


def modules_named_in_state_dict(
    config: PeftConfig,
    adapter_name: str,
    state_dict: dict[str, Any],
    prefix: str,
    modules: list[tuple[str, nn.Module]],
    from_config: list[str],
) -> list[str]:
    """The modules that `state_dict`'s adapter keys (`<module>.<prefix>...`) name, in model order, for
    `inject_adapter(state_dict=...)`; warns where they differ from `from_config` (the config's targets)."""
    if getattr(config, "target_parameters", None):
        raise ValueError(
            "inject_adapter(state_dict=...) finds target modules from the state dict's keys, which cannot name "
            "the parameters `target_parameters` adapts; inject this adapter without a state_dict."
        )
    marker = "." + prefix
    # torch.compile's wrapper adds `_orig_mod.` in front of every key
    named = {k.rsplit(marker, 1)[0].removeprefix("_orig_mod.") for k in state_dict if marker in k}
    matched = [key for key, _ in modules if key in named]
    if not matched:
        raise ValueError(
            f"The state_dict passed for adapter '{adapter_name}' names no module of the model: it has no key "
            f"of the form '<module>{marker}...' whose module exists (e.g. {sorted(state_dict)[:3]}). Pass the "
            "adapter's tensors keyed as in the model, without the 'base_model.model.' prefix."
        )
    only_config = sorted(set(from_config) - set(matched))
    only_state = sorted(set(matched) - set(from_config))
    if only_config or only_state:
        warnings.warn(
            f"Adapter '{adapter_name}' is injected where the state_dict's keys say, which differs from its "
            f"target_modules: targeted by the config only: {only_config}; named by the state_dict only: "
            f"{only_state}.",
            PeftWarning,
        )
    return matched


# Mamba-style models compute with these modules' weights directly (a fused selective scan, a causal
# convolution called functionally), so a LoRA layer in their place would never run: peft refuses them.
_MAMBA_MODEL_TYPES = ("falcon_h1", "mamba", "mamba2", "falcon_mamba", "nemotron_h")
_MAMBA_INCOMPATIBLE_MODULES = ("out_proj", "conv1d")
_LORA_LIKE_TYPES = ("LORA", "ADALORA", "XLORA", "RANDLORA")


def check_mamba_targets(config: PeftConfig, model: nn.Module, matched: list[str]) -> None:
    """Raise a ValueError when a LoRA-like adapter targets a Mamba `out_proj` or `conv1d` (as peft does)."""
    peft_type = getattr(config.peft_type, "value", config.peft_type)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if peft_type not in _LORA_LIKE_TYPES or model_type not in _MAMBA_MODEL_TYPES:
        return
    for key in matched:
        name = key.rpartition(".")[2]
        if name in _MAMBA_INCOMPATIBLE_MODULES:
            raise ValueError(
                f"[PEFT:{peft_type}] Module '{name}' ({key}) is incompatible with Mamba-based models "
                f"(model_type='{model_type}'): the model uses its weight directly, so an adapter there would "
                f"never run. Incompatible modules: {set(_MAMBA_INCOMPATIBLE_MODULES)}. Please remove it from "
                "`target_modules` (e.g. target in_proj and x_proj instead)."
            )


def attention_output_projections(modules: list[tuple[str, nn.Module]]) -> set[str]:
    """Names of the `out_proj` layers of `nn.MultiheadAttention` modules. The attention reads their weight
    directly and never calls them, so an adapter layer put in their place would never run."""
    return {
        f"{name}.out_proj" if name else "out_proj"
        for name, m in modules
        if isinstance(m, nn.MultiheadAttention)
    }


def drop_attention_output_projections(
    matched: list[str], modules: list[tuple[str, nn.Module]], adapter_name: str
) -> list[str]:
    """`matched` without attention output projections, with a warning naming those left out."""
    ignored = attention_output_projections(modules) & set(matched)
    if not ignored:
        return matched
    warnings.warn(
        f"Adapter '{adapter_name}': {sorted(ignored)} are the output projections of nn.MultiheadAttention modules, "
        "which use their weight directly: an adapter there would never run, so they are not adapted. Target the "
        "MultiheadAttention module itself instead (LoRA then adapts both of its projections).",
        PeftWarning,
    )
    return [key for key in matched if key not in ignored]
