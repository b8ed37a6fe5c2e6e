"""Finding adapter files in a local folder or a Hugging Face Hub repo (cache and HF_HUB_OFFLINE honoured)."""

from __future__ import annotations

import os


def resolve_adapter_file(
    model_id: str | os.PathLike,
    filename: str,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> str | None:
    """Return a local path to `filename` of the adapter `model_id`, or None when it has no such file.

    `model_id` is a local folder or a Hub repo id. Hub files come through `hf_hub_download`, which uses
    the local cache and honours `HF_HUB_OFFLINE`; a repo that cannot be reached is an error that says so.
    """
    model_id = os.fspath(model_id)
    if os.path.isdir(model_id):
        path = os.path.join(model_id, subfolder or "", filename)
        return path if os.path.isfile(path) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return hf_hub_download(
            model_id,
            filename,
            subfolder=subfolder or None,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
        )
    except EntryNotFoundError:
        return None
    except RepositoryNotFoundError as err:
        raise ValueError(
            f"'{model_id}' is neither a local folder nor a Hub repo that can be reached ({err.__class__.__name__})."
        ) from err
    except LocalEntryNotFoundError as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        hint = " HF_HUB_OFFLINE is set, so only the local cache was searched." if offline else ""
        raise ValueError(
            f"Could not find '{filename}' for '{model_id}': it is not a local folder and the file is not in the "
            f"Hub cache.{hint}"
        ) from err
