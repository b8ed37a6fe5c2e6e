"""Deciding quickly whether a Hub id can be used, so an offline machine gets an error at once.

Without a network, huggingface_hub retries each request for many seconds before giving up (about 50 s
for a model, 25 s for `info`). The command line checks first: a file in the Hub cache is used from the
cache when the Hub cannot be reached, and an id the cache does not hold is an error naming it.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

from ..utils.hub import cached_hub_file, hub_offline
from .errors import CliError

_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a connection to the Hub endpoint (HF_ENDPOINT) opens within `timeout` seconds.

    Behind a proxy the endpoint is reached through it, which a plain connection cannot test: then the Hub
    is taken to be reachable, and huggingface_hub's own errors apply.
    """
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def looks_like_hub_id(spec: str) -> bool:
    """'org/name' that is not an existing path (paths start with '.', '/' or '~', or have more parts)."""
    return (
        spec.count("/") == 1
        and not spec.startswith((".", "/", "~"))
        and "\\" not in spec
        and not os.path.exists(os.path.expanduser(spec))
    )


def hub_files_only_from_cache(repo_id: str, filename: str, what: str) -> bool:
    """Whether Hub repo `repo_id` must be read from the cache only (offline); CliError when it cannot be.

    Args:
        repo_id: the Hub id, e.g. "org/name".
        filename: a file the repo must have, looked up in the cache (e.g. "config.json").
        what: what the id was given as, for the message (e.g. "--model").
    """
    offline = hub_offline() or not hub_reachable()
    if not offline:
        return False
    if cached_hub_file(repo_id, filename) is None:
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face Hub cannot be reached (offline)"
        raise CliError(
            f"{what} '{repo_id}' is not a local path, {why}, and the Hub cache does not hold it: download it "
            "while online, or pass a local folder (or a .gguf model file)."
        )
    return True
