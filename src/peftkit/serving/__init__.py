"""Serving many adapters: an adapter store (loaded on first use, least recently used unloaded past a
bound), a continuous-batching generation engine across adapters, and the OpenAI-compatible HTTP server
behind `peftkit serve`."""

from .store import AdapterStore, AdapterStoreError, StoredAdapter

__all__ = ["AdapterStore", "AdapterStoreError", "StoredAdapter"]
