"""The base model's own state dict, read from and written into an adapted model under its original keys.

Adapting a model renames its tensors: a LoRA layer keeps the original module as `base_layer`
(`q_proj.weight` becomes `q_proj.base_layer.weight`), `modules_to_save` keeps it as `original_module`,
trainable tokens inside a `token_adapter`. Code that handles the base weights by themselves (loading
them after FSDP wrapping, checkpointing only the base) wants the original names. The names are found by
walking the module tree, so a module that happens to be called `base_layer` in the original model keeps
its name: only the infixes that adapter modules insert are dropped. Every tensor that belongs to an
adapter (the adapters' containers, `modules_to_save` copies, trainable-token deltas) is left out.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterator

import torch
from torch import nn

from ..tuners.tuners_utils import BaseTunerLayer
from ..utils.auxiliary_wrapper import AuxiliaryTrainingWrapper

__all__ = ["IncompatibleKeys", "get_base_model_state_dict", "set_base_model_state_dict"]

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _original_module_paths(root: nn.Module) -> dict[str, str | None]:
    """Module path in the adapted model -> its path in the original model; None for an adapter module,
    and for adapter layers and wrappers themselves (their own tensors are adapter tensors)."""
    paths: dict[str, str | None] = {}

    def visit(module: nn.Module, path: str, original: str) -> None:
        is_adapter_module = isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper))
        paths[path] = None if is_adapter_module else original
        for name, child in module._modules.items():
            if child is None:
                continue
            child_path = f"{path}.{name}" if path else name
            if isinstance(module, BaseTunerLayer):
                keeps_base = name == "base_layer"  # everything else on a tuner layer is the adapter's
            elif isinstance(module, AuxiliaryTrainingWrapper):
                # the wrapped original (or the tuner layer trainable tokens wrap it in) keeps its place
                keeps_base = name == "original_module" or isinstance(child, BaseTunerLayer)
            else:
                visit(child, child_path, f"{original}.{name}" if original else name)
                continue
            if keeps_base:
                visit(child, child_path, original)
            else:
                _mark_adapter(child, child_path, paths)

    visit(root, "", "")
    return paths


def _mark_adapter(module: nn.Module, path: str, paths: dict[str, str | None]) -> None:
    for name, _ in module.named_modules(prefix=path, remove_duplicate=False):
        paths[name] = None


def _base_root(model: nn.Module) -> nn.Module:
    """The original model inside a PeftModel (prompt learning: the base model itself)."""
    if getattr(model, "_is_prompt_learning", False):
        return model.base_model
    base = model.base_model
    return base.model if hasattr(base, "model") and isinstance(base.model, nn.Module) else base


def _base_keys(root: nn.Module) -> Iterator[tuple[str, str]]:
    """(key in `root.state_dict()`, original key) of every base-model tensor of `root`."""
    paths = _original_module_paths(root)
    for key in root.state_dict(keep_vars=True):
        module_path, _, leaf = key.rpartition(".")
        original = paths.get(module_path)
        if original is not None:
            yield key, f"{original}.{leaf}" if original else leaf


def get_base_model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict, under the keys the model had before it was adapted.

    Args:
        model: a `PeftModel`.

    Returns:
        original key -> tensor (the model's own tensors, not copies), without any adapter tensor.
    """
    root = _base_root(model)
    state = root.state_dict()
    return {original: state[key] for key, original in _base_keys(root)}


def set_base_model_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True
) -> IncompatibleKeys:
    """Load `state_dict`, keyed as the model was before it was adapted, into the base model of `model`.

    The counterpart of `get_base_model_state_dict`; adapter tensors are left alone.

    Args:
        model: a `PeftModel`.
        state_dict: original key -> tensor.
        strict: raise a `RuntimeError` (nothing loaded) when keys are missing or unexpected.

    Returns:
        `IncompatibleKeys(missing_keys, unexpected_keys)`, in original keys.
    """
    root = _base_root(model)
    key_of = {original: key for key, original in _base_keys(root)}
    unexpected = [k for k in state_dict if k not in key_of]
    missing = [k for k in key_of if k not in state_dict]
    if strict and (missing or unexpected):
        problems = []
        if missing:
            problems.append(f"Missing key(s) in state_dict: {missing}")
        if unexpected:
            problems.append(f"Unexpected key(s) in state_dict: {unexpected}")
        raise RuntimeError("Error(s) in loading state_dict:\n\t" + "\n\t".join(problems))
    root.load_state_dict({key_of[k]: v for k, v in state_dict.items() if k in key_of}, strict=False)
    return IncompatibleKeys(missing_keys=missing, unexpected_keys=unexpected)
