"""The error of the GGUF conversions, and the one place that imports the optional `gguf` package."""

from __future__ import annotations

import importlib.util
from types import ModuleType

GGUF_EXTRA = "pip install 'peftkit[gguf]'"


class GGUFConversionError(ValueError):
    """An adapter or GGUF file that cannot be converted; the message names what and how to fix it."""


def require_gguf(what: str) -> ModuleType:
    """The `gguf` package (llama.cpp's file format library), or an ImportError naming the extra."""
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"{what} needs the 'gguf' package, which is not installed: {GGUF_EXTRA}")
    import gguf

    return gguf
