"""The base of the wrappers that train a whole module beside the adapter layers.

`modules_to_save` and trainable tokens replace a module of the base model with a wrapper. Code written for
the base model reads that module's attributes (`.weight`, `.in_features`, `.num_embeddings`, a custom
head's own fields), so a wrapper answers every attribute it does not have itself from the module it
currently computes with, as PEFT's wrappers do.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class AuxiliaryTrainingWrapper(nn.Module):
    """A module wrapper that forwards unknown attributes to `wrapped_module()`."""

    def wrapped_module(self) -> nn.Module:
        """The module the wrapper computes with right now (subclasses say which)."""
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError as missing:
            error = missing
        # While the wrapper is being built or copied, `wrapped_module()` itself reads attributes that
        # are not there yet; without this guard each of those reads would recurse back into here.
        if self.__dict__.get("_resolving_attribute", False):
            raise error
        self.__dict__["_resolving_attribute"] = True
        try:
            target = self.wrapped_module()
        except AttributeError:
            raise error from None
        finally:
            self.__dict__["_resolving_attribute"] = False
        return getattr(target, name)
