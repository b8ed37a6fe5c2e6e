"""Warn when an adapter touches one side of a tied weight (e.g. input embeddings tied to the LM head).

Adapting one of two modules that share a weight silently unties them in effect: the forward pass changes
only the adapted module, while merging writes into the shared tensor and so changes the other module
too. Training a `modules_to_save` copy of one of them breaks the tie as well, and a model saved with
`tie_word_embeddings=True` re-ties them on reload, losing the trained copy. peft says nothing; we explain.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

from torch import nn

from ..utils.modules_to_save import ModulesToSaveWrapper
from ..utils.warnings import PeftWarning
from ._tuner_layer import BaseTunerLayer


def _weight_of(module: nn.Module) -> nn.Parameter | None:
    # dictionary lookups, not getattr: a failed attribute lookup on an nn.Module raises and catches an
    # AttributeError, which over every module of a large model was a visible part of `add_adapter`
    if isinstance(module, BaseTunerLayer):
        module = module.get_base_layer()
    elif isinstance(module, ModulesToSaveWrapper):
        return module.weight
    return module._parameters.get("weight")


def warn_about_tied_weights(
    modules: list[tuple[str, nn.Module]],
    adapted: Iterable[str],
    fully_trained: Iterable[str] = (),
    expected: Callable[[str, list[str]], bool] | None = None,
) -> None:
    """Warn for each adapted or fully trained module whose weight another module shares.

    Adapting both sides does not help: both merges would land in the one shared tensor. `expected(name,
    others)` returns True for ties the method keeps consistent itself (no warning for those).
    """
    sharers: dict[int, list[str]] = {}
    for name, module in modules:
        weight = _weight_of(module)
        if isinstance(weight, nn.Parameter):
            sharers.setdefault(id(weight), []).append(name)
    adapted, fully_trained = set(adapted), set(fully_trained)
    touched = adapted | fully_trained
    for name, module in modules:
        if name not in touched:
            continue
        weight = _weight_of(module)
        others = [n for n in sharers.get(id(weight), []) if n != name]
        if not others or (expected is not None and expected(name, others)):
            continue
        if name in adapted:
            consequence = (
                f"the adapter changes only '{name}' in the forward pass, while merging writes into the shared "
                f"weight and changes {others} too, so merged outputs will differ from unmerged ones"
            )
        else:
            consequence = (
                f"the trained modules_to_save copy of '{name}' is no longer tied to {others}, and a merged model "
                "saved with tied embeddings re-ties them on reload, losing the trained copy"
            )
        warnings.warn(
            f"'{name}' shares its weight with {others} (tied weights): {consequence}. Untie them first (set "
            "config.tie_word_embeddings=False and give each module its own copy of the weight), or keep the "
            "adapter unmerged.",
            PeftWarning,
            stacklevel=4,
        )
