"""`modules_to_save`: modules trained in full (a classifier head, say), one copy per adapter.

The wrapper keeps the untouched module as `original_module` and a trainable deep copy per adapter in
`modules_to_save[adapter_name]`, exactly the tree PEFT builds, so state-dict keys match.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .auxiliary_wrapper import AuxiliaryTrainingWrapper


class ModulesToSaveWrapper(AuxiliaryTrainingWrapper):
    """Routes the forward through the active adapter's copy of the module (the original when disabled).

    Attributes the wrapper does not have are those of that same module (`wrapper.out_features`)."""

    def __init__(self, module_to_save: nn.Module, adapter_name: str) -> None:
        super().__init__()
        self.original_module = module_to_save
        self.modules_to_save = nn.ModuleDict({})
        self._active_adapter: str | list[str] = adapter_name
        self._disable_adapters = False
        self.update(adapter_name)

    @property
    def disable_adapters(self) -> bool:
        return self._disable_adapters

    @property
    def active_adapter(self) -> str:
        names = self.active_adapters
        return names[0] if names else ""

    @property
    def active_adapters(self) -> list[str]:
        return [self._active_adapter] if isinstance(self._active_adapter, str) else list(self._active_adapter)

    def wrapped_module(self) -> nn.Module:
        name = self.active_adapter
        if self._disable_adapters or name not in self.modules_to_save:
            return self.original_module
        return self.modules_to_save[name]

    def unwrapped_module(self) -> nn.Module:
        """The module that replaces the wrapper on unload: the active trained copy (as PEFT does)."""
        name = self.active_adapter
        return self.modules_to_save[name] if name in self.modules_to_save else self.original_module  # noqa: SIM401

    def update(self, adapter_name: str) -> None:
        """Add a trainable copy of the original module for `adapter_name`."""
        if adapter_name not in self.modules_to_save:
            self.modules_to_save[adapter_name] = copy.deepcopy(self.original_module)
        self.original_module.requires_grad_(False)
        self.set_adapter(self.active_adapters)

    def adapter_state_dict_load_map(self, adapter_name: str) -> dict[str, str]:
        """File keys relative to this module -> the keys of `adapter_name`'s copy (for loaders that rename
        keys, e.g. transformers' `load_adapter`)."""
        if adapter_name not in self.modules_to_save:
            return {}
        return {
            key: f"modules_to_save.{adapter_name}.{key}"
            for key in self.modules_to_save[adapter_name].state_dict()
        }

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None or self._disable_adapters:
            return self.wrapped_module()(x, *args, **kwargs)
        return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)

    def _mixed_batch_forward(
        self, x: torch.Tensor, *args: Any, adapter_names: list[str], **kwargs: Any
    ) -> Any:
        outputs = []
        for index, name in enumerate(adapter_names):
            module = self.modules_to_save[name] if name in self.modules_to_save else self.original_module  # noqa: SIM401
            outputs.append(module(x[index : index + 1], *args, **kwargs))
        return torch.cat(outputs, dim=0)

    def enable_adapters(self, enabled: bool) -> None:
        if enabled:
            self.set_adapter(self.active_adapters)
        else:
            self.modules_to_save.requires_grad_(False)
        self._disable_adapters = not enabled

    def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if len(names) > 1:
            raise ValueError(
                f"modules_to_save cannot be active for several adapters at once (got {names}): each adapter has "
                "its own full copy of the module."
            )
        for key, module in self.modules_to_save.items():
            module.requires_grad_(key in names and not inference_mode)
        self._active_adapter = names[0] if names else []

    def set_requires_grad(self, adapter_names: str | Iterable[str], requires_grad: bool = True) -> None:
        """Turn gradients on or off for the copies of `adapter_names` (the active adapter is unchanged)."""
        names = {adapter_names} if isinstance(adapter_names, str) else set(adapter_names)
        for key, module in self.modules_to_save.items():
            if key in names:
                module.requires_grad_(requires_grad)

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.modules_to_save:
            del self.modules_to_save[adapter_name]
        if adapter_name in self.active_adapters:
            remaining = list(self.modules_to_save)
            self.set_adapter(remaining[:1])


def has_ancestor_in(key: str, owners: set[str]) -> bool:
    """Whether a dotted module name above `key` (its parent, grandparent, ...) is one of `owners`."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in owners for i in range(1, len(parts)))


def set_modules_to_save(
    model: nn.Module, adapter_name: str, module_names: Iterable[str], skip: Iterable[str] = ()
) -> list[str]:
    """Wrap (or add an adapter copy to) every module whose name ends with one of `module_names`."""
    names = list(module_names)
    owners = set(skip)
    wrapped: list[str] = []
    for key, module in list(model.named_modules()):
        if not key or has_ancestor_in(key, owners | set(wrapped)):
            continue
        if not any(key == n or key.endswith("." + n) for n in names):
            continue
        if isinstance(module, ModulesToSaveWrapper):
            module.update(adapter_name)
            module.set_adapter(module.active_adapters)
        else:
            parent = model.get_submodule(key.rpartition(".")[0])
            setattr(parent, key.rpartition(".")[2], ModulesToSaveWrapper(module, adapter_name))
        wrapped.append(key)
    return wrapped
