"""The package version (ground floor: saving records it in the weights file's metadata)."""

__version__ = "0.1.0"
