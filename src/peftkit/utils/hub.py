"""Finding adapter files in a local folder or a Hugging Face Hub repo (cache and HF_HUB_OFFLINE honoured).

A Hub file comes through `hf_hub_download`, which serves it from the local cache when it is there and
fresh. Offline (`HF_HUB_OFFLINE=1`, read at call time, or `local_files_only=True`) only the cache is
searched; a file the cache does not hold then raises `AdapterNotCachedError`, because offline we cannot
tell "the repo has no such file" from "it was never downloaded".

This is the one module that talks to `huggingface_hub`, and it imports it inside its functions: loading
it costs ~0.3 s, which `import peftkit` does not pay unless something comes from or goes to the Hub.
"""

from __future__ import annotations

import os
from typing import Any

from .warnings import AdapterLoadError

# keyword arguments of from_pretrained/load_adapter that select where adapter files come from
HUB_KWARGS = ("subfolder", "revision", "cache_dir", "token", "local_files_only", "force_download")


class AdapterNotCachedError(AdapterLoadError):
    """Offline, and the Hub cache does not hold the file."""


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set now (huggingface_hub itself reads it only at import time)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return value in ("1", "true", "yes", "on") or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def split_hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the file-location keyword arguments out of `kwargs` (in place) and return them."""
    return {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}


def _looks_like_path(model_id: str) -> bool:
    return (
        os.path.isabs(model_id)
        or model_id.startswith((".", "~"))
        or model_id.count("/") > 1
        or "\\" in model_id
    )


def resolve_adapter_file(
    model_id: str | os.PathLike,
    filename: str,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> str | None:
    """Return a local path to `filename` of the adapter `model_id`, or None when it has no such file.

    `model_id` is a local folder or a Hub repo id. Raises `AdapterLoadError` when `model_id` is neither
    (naming both readings), and `AdapterNotCachedError` when offline and the cache lacks the file.
    """
    model_id = os.fspath(model_id)
    if os.path.isdir(model_id):
        path = os.path.join(model_id, subfolder or "", filename)
        return path if os.path.isfile(path) else None
    if os.path.isfile(model_id):
        raise AdapterLoadError(
            f"'{model_id}' is a file, but an adapter is a folder (holding {filename}): pass the folder."
        )
    if _looks_like_path(model_id):
        raise AdapterLoadError(
            f"The adapter folder '{model_id}' does not exist (and it is not a Hub repo id)."
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = local_files_only or hub_offline()
    try:
        return hf_hub_download(
            model_id,
            filename,
            subfolder=subfolder or None,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=offline,
            force_download=force_download,
        )
    # LocalEntryNotFoundError subclasses EntryNotFoundError: it must be caught first
    except LocalEntryNotFoundError as err:
        why = "HF_HUB_OFFLINE/local_files_only is set" if offline else "the Hub could not be reached"
        raise AdapterNotCachedError(
            f"Could not find '{filename}' of '{model_id}'{f' (subfolder {subfolder!r})' if subfolder else ''}: "
            f"it is not a local folder, {why}, and the file is not in the Hub cache"
            f"{f' at {cache_dir}' if cache_dir else ''}. Download the adapter while online, or pass the "
            "path of a local copy."
        ) from err
    except EntryNotFoundError:
        return None
    except HFValidationError as err:
        raise AdapterLoadError(
            f"'{model_id}' is neither a local folder nor a valid Hub repo id ('org/name'): {err}"
        ) from err
    except RevisionNotFoundError as err:
        raise AdapterLoadError(f"The Hub repo '{model_id}' has no revision {revision!r}.") from err
    except RepositoryNotFoundError as err:
        raise AdapterLoadError(
            f"'{model_id}' is neither a local folder nor a Hub repo that can be reached (private repos need "
            f"`token=`): {err.__class__.__name__}."
        ) from err


def cached_hub_file(repo_id: str, filename: str) -> str | None:
    """The local path of `filename` of Hub repo `repo_id` if the Hub cache holds it (no network)."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, filename)
    return cached if isinstance(cached, str) else None


def hub_api(token: str | None = None) -> Any:
    """A `huggingface_hub.HfApi` client."""
    from huggingface_hub import HfApi

    return HfApi(token=token)
