"""Every public name of peft 0.21.2's public modules exists at the same path in peftkit.

A module's public names are its `__all__`; for a module without `__all__`, the names it defines itself
(functions, classes, assignments at top level, read from peft's source), not what it merely imports.
A name may be missing only if it is listed below with the reason: `OMITTED` (deliberately not offered)
or `PENDING` (belongs to work not merged into this branch yet; the lead empties that list at merge time).
Both lists are checked too: an entry for a name peft does not have, or that peftkit now has, fails.
For functions and classes, peftkit's signature takes every parameter peft's takes, in the same order and
with the same defaults (peftkit may add keyword-only parameters after them).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import warnings

import pytest

MODULES = (
    "",
    ".tuners",
    ".utils",
    ".helpers",
    ".mapping",
    ".utils.merge_utils",
    ".optimizers",
    ".utils.hotswap",
    ".utils.save_and_load",
    ".tuners.tuners_utils",
    ".tuners.lora",
)


# ---------------------------------------------------------------------------------------------------
# PENDING: names that belong to work on other branches. The lead empties this list at merge time.
# ---------------------------------------------------------------------------------------------------
PENDING: dict[str, str] = {}

# Names peftkit deliberately does not offer, (module, name) -> why.
_GPTQ = (
    "GPTQ layers are not adapted: gptqmodel has no wheel for these machines (it compiles a C++ kernel), so "
    "peftkit cannot test them; a GPTQ target is refused naming the backend (README: Methods on quantized bases)"
)
OMITTED: dict[tuple[str, str], str] = {
    (".tuners.lora", "GPTQLoraLinear"): _GPTQ,
    (".utils", "get_gptqmodel_quant_linear"): _GPTQ,
}

# Signatures that differ from peft's (all predate this test), name -> why. Calls written the usual way
# (the tuner and the framework build these objects; users pass the first arguments by position) work.
_TUNER_KEYWORD = "peftkit's tuners name their config argument `peft_config` (peft's BaseTuner does too)"
_LAYER_SETTINGS = (
    "peftkit's LoRA layers take the settings as keyword arguments, not peft 0.21's `config` object"
)
SIGNATURE_DIFFERENCES: dict[str, str] = {
    "AdaLoraModel": _TUNER_KEYWORD,
    "AdamssModel": _TUNER_KEYWORD,
    "OSFModel": _TUNER_KEYWORD,
    "UniLoraModel": _TUNER_KEYWORD,
    "MixedModel": _TUNER_KEYWORD,
    "FrodModel": "low_cpu_mem_usage and state_dict come after autocast_adapter_dtype (passed by keyword)",
    "TinyLoraModel": "low_cpu_mem_usage comes after autocast_adapter_dtype (passed by keyword)",
    "XLoraModel": "the options after adapter_name are keyword arguments (PeftModel passes them by name)",
    "Linear": _LAYER_SETTINGS,
    "Embedding": _LAYER_SETTINGS,
    "ParamWrapper": _LAYER_SETTINGS,
    "LoraLayer": "ephemeral_gpu_offload (an accelerator-offload speed option) is not a layer argument",
    "AuxiliaryTrainingWrapper": "an abstract base here; the wrappers take their own arguments",
    "ModulesToSaveWrapper": "no tied_module: tying adapters (ensure_weight_tying) is not implemented",
    "TrainableTokensWrapper": "wraps the trainable-tokens layer the framework builds (peft's builds it inside)",
    "PeftModelForTokenClassification": "peft_config has no default (None would fail at once)",
}


def _defined_names(module) -> list[str]:
    """The public names a module defines at top level (for modules without `__all__`)."""
    tree = ast.parse(inspect.getsource(module))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return sorted(n for n in names if not n.startswith("_"))


def _peft_names(suffix: str) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = importlib.import_module("peft" + suffix)
    names = getattr(module, "__all__", None)
    return list(names) if names is not None else _defined_names(module)


def _is_excused(suffix: str, name: str) -> bool:
    return name in PENDING or (suffix, name) in OMITTED


@pytest.mark.parametrize("suffix", MODULES, ids=lambda s: "peft" + s)
def test_every_public_name_of_peft_exists_in_peftkit(suffix):
    ours = importlib.import_module("peftkit" + suffix)
    missing = [n for n in _peft_names(suffix) if not hasattr(ours, n) and not _is_excused(suffix, n)]
    assert not missing, f"peftkit{suffix} lacks {missing}"


def test_the_lists_of_excused_names_are_current():
    public = {suffix: set(_peft_names(suffix)) for suffix in MODULES}
    stale = [name for name in PENDING if not any(name in names for names in public.values())]
    stale += [f"{s}:{n}" for s, n in OMITTED if n not in public[s]]
    assert not stale, f"not public in peft 0.21.2 (remove them from the lists): {stale}"
    present = [
        f"peftkit{s}.{n}"
        for s in MODULES
        for n in public[s]
        if _is_excused(s, n) and hasattr(importlib.import_module("peftkit" + s), n)
    ]
    assert not present, f"peftkit has these now: remove them from PENDING/OMITTED: {present}"


def _parameters(obj) -> list[inspect.Parameter] | None:
    target = obj.__init__ if inspect.isclass(obj) else obj
    if not callable(target):
        return None
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return None
    return [p for p in params if p.name != "self"]


def _same_default(mine, theirs) -> bool:
    """Equal defaults; a function or class default (peft's own helper) is the same if it has the same name."""
    if callable(theirs) and hasattr(theirs, "__qualname__"):
        return getattr(mine, "__qualname__", None) == theirs.__qualname__
    return mine == theirs


def _signature_gaps(theirs, ours) -> list[str]:
    """What `ours` lacks of `theirs`'s parameters (names, order, kinds, defaults)."""
    their_params, our_params = _parameters(theirs), _parameters(ours)
    if their_params is None or our_params is None:
        return []
    gaps = []
    ours_by_name = {p.name: p for p in our_params}
    positional = [p.name for p in our_params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for index, param in enumerate(
        p for p in their_params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ):
        if index >= len(positional) or positional[index] != param.name:
            gaps.append(f"positional parameter {index} is {param.name!r} in peft")
    for param in their_params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        mine = ours_by_name.get(param.name)
        if mine is None:
            if not any(p.kind == p.VAR_KEYWORD for p in our_params):
                gaps.append(f"no parameter {param.name!r}")
            continue
        if param.default is not param.empty and not _same_default(mine.default, param.default):
            gaps.append(f"{param.name}={mine.default!r}, peft: {param.default!r}")
    return gaps


@pytest.mark.parametrize("suffix", MODULES, ids=lambda s: "peft" + s)
def test_functions_and_classes_take_peft_parameters(suffix):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = importlib.import_module("peft" + suffix)
    ours = importlib.import_module("peftkit" + suffix)
    problems = {}
    for name in _peft_names(suffix):
        if _is_excused(suffix, name) or name in SIGNATURE_DIFFERENCES or not hasattr(ours, name):
            continue
        their_obj, our_obj = getattr(theirs, name), getattr(ours, name)
        if inspect.isclass(their_obj) and not inspect.isfunction(getattr(their_obj, "__init__", None)):
            continue  # enums and classes without a constructor of their own
        gaps = _signature_gaps(their_obj, our_obj)
        if gaps:
            problems[name] = gaps
    assert not problems, f"peftkit{suffix}: signatures differ from peft's: {problems}"
