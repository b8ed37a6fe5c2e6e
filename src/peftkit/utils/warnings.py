"""The warning and error types peftkit raises, so callers can filter or catch them by type."""

from __future__ import annotations


class PeftWarning(UserWarning):
    """A warning about adapter use that may give wrong or surprising results."""


class PeftError(Exception):
    """Base class of peftkit's own errors (each also subclasses the builtin error PEFT raises there)."""


class AdapterLoadError(PeftError, ValueError):
    """An adapter could not be loaded: missing or corrupt file, wrong base model, missing keys."""


class NoMatchingPeftModuleError(PeftError, ValueError):
    """No module of the model matched an adapter's `target_modules`."""


class MissingConfigKeysError(PeftError, TypeError):
    """A config file lacks keys every PEFT config has (`peft_type`): it is not an adapter config."""


class FolderLockedError(PeftError, TimeoutError):
    """Another process kept saving into the same folder for longer than a save waits for it."""
