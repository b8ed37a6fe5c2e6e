"""Putting saved adapters onto a base model for the subcommands that use them (generate, merge)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .errors import CliError
from .hub_access import hub_files_only_from_cache


def check_adapter_location(location: str) -> bool:
    """Raise CliError when `location` cannot be an adapter: a local path that is not an adapter folder, or
    a Hub id that cannot be read (offline and not in the cache). Returns whether to read it from the cache
    only. Cheap: call it before loading a base model, so mistakes fail at once."""
    path = Path(location).expanduser()
    if path.is_dir():
        if not (path / "adapter_config.json").is_file():
            subs = sorted(p.parent.name for p in path.glob("*/adapter_config.json"))
            hint = f" Its sub-folders hold adapters: {', '.join(subs)}." if subs else ""
            raise CliError(f"'{location}' is not an adapter folder (no adapter_config.json).{hint}")
    elif path.exists():
        hint = (
            f" It is a GGUF file: turn a llama.cpp adapter into one with `peftkit import --from gguf {location} -o DIR`."
            if path.suffix.lower() == ".gguf"
            else ""
        )
        raise CliError(f"'{location}' is a file; an adapter is a folder holding adapter_config.json.{hint}")
    elif location.startswith((".", "/", "~")) or location.count("/") != 1:
        raise CliError(f"The adapter folder '{location}' does not exist (and it is not a Hub id 'org/name').")
    else:
        return hub_files_only_from_cache(location, "adapter_config.json", "The adapter")
    return False


def adapter_names(locations: list[str]) -> list[str]:
    """A distinct, valid adapter name per location, taken from its folder name."""
    names: list[str] = []
    for location in locations:
        base = re.sub(r"\W", "_", Path(location.rstrip("/")).name) or "adapter"
        name, n = base, 1
        while name in names or name == "__base__":
            n += 1
            name = f"{base}_{n}"
        names.append(name)
    return names


def attach_adapters(model: Any, locations: list[str]) -> tuple[Any, list[str]]:
    """Load every adapter onto `model` and activate them all together (their effects add up).

    Returns the PeftModel and the adapter names.
    """
    from .. import PeftModel

    cache_only = [check_adapter_location(location) for location in locations]
    names = adapter_names(locations)
    hub = [{"local_files_only": True} if local else {} for local in cache_only]
    try:
        peft_model = PeftModel.from_pretrained(model, locations[0], adapter_name=names[0], **hub[0])
        for location, name, kwargs in zip(locations[1:], names[1:], hub[1:]):
            peft_model.load_adapter(location, adapter_name=name, **kwargs)
    except ValueError as err:  # AdapterLoadError and config errors: their messages say what is wrong
        raise CliError(f"Could not load the adapter: {err}") from err
    if len(names) > 1:
        peft_model.base_model.set_adapter(names)
    return peft_model.eval(), names
