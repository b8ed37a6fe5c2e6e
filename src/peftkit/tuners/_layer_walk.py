"""A quick walk to a model's adapter layers, for code that runs on every call (mixed-adapter routing).

`model.modules()` visits every module, including each adapter's own factor modules inside every adapted
layer: with 16 LoRA adapters on a SmolLM2-sized model that is ~12,000 visits per call, most of them
inside tuner layers. Adapter layers only nest through `base_layer` (a layer of one method wrapping a
layer of another, as in mixed models), so inside a tuner layer only `base_layer` is walked.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from ..utils.modules_to_save import ModulesToSaveWrapper
from ._tuner_layer import BaseTunerLayer


def adapter_modules(model: nn.Module) -> Iterator[nn.Module]:
    """The tuner layers and modules_to_save wrappers of `model`, outermost first, each once (the same
    order as filtering `model.modules()`)."""
    seen: set[int] = set()
    stack = [model]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        if isinstance(module, BaseTunerLayer):
            yield module
            base = getattr(module, "base_layer", None)
            children = [base] if isinstance(base, nn.Module) else []
        else:
            if isinstance(module, ModulesToSaveWrapper):
                yield module
            children = [child for child in module._modules.values() if child is not None]
        stack.extend(reversed(children))
