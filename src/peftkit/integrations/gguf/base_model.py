"""What an export needs to know about the base model: its llama.cpp architecture and attention heads.

The adapter file names modules, not the model's shape, so the base model is described from one of: the
GGUF file the adapter will run on (its metadata), a transformers model folder or its `config.json`, or a
Hub id whose `config.json` is fetched (from the cache only when offline). Nothing is executed: configs
are read as JSON, GGUF files with the `gguf` reader.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...utils.hub import hub_offline
from .errors import GGUFConversionError, require_gguf
from .names import ARCHITECTURES, GGUF_ARCHITECTURES, INTERLEAVED_QK, NO_OUTPUT_TENSOR

OUTPUT_TENSOR = "output.weight"


@dataclass(frozen=True)
class BaseModelShape:
    """The facts about a base model that place an adapter's tensors in llama.cpp."""

    architecture: str  # llama.cpp's name, e.g. "llama"
    n_head: int
    n_head_kv: int
    n_layer: int
    has_output: bool  # False when the output head is the token embedding (tied): llama.cpp has no tensor
    source: str  # what it was read from, for messages
    # (out, in) of each 2-D weight, known when read from a GGUF file (llama.cpp checks adapters against them)
    weight_shapes: dict[str, tuple[int, int]] | None = None

    @property
    def interleaves_qk(self) -> bool:
        """Whether llama.cpp holds this architecture's query/key rows interleaved (see `names`)."""
        return self.architecture in INTERLEAVED_QK


def _unsupported(what: str, source: str) -> GGUFConversionError:
    supported = ", ".join(sorted(ARCHITECTURES))
    return GGUFConversionError(
        f"{source} is a {what} model; llama.cpp adapters can be exported for these transformers model types: "
        f"{supported} (GGUF architectures {', '.join(GGUF_ARCHITECTURES)})."
    )


def shape_from_gguf_file(path: str | os.PathLike) -> BaseModelShape:
    """Read the architecture and head counts from a GGUF model file's metadata."""
    gguf = require_gguf("Reading a GGUF base model")
    try:
        reader = gguf.GGUFReader(os.fspath(path))
    except (ValueError, OSError) as err:
        raise GGUFConversionError(f"'{path}' is not a readable GGUF file: {err}") from err

    def value(key: str) -> Any:
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    arch = value("general.architecture")
    if value("general.type") == "adapter":
        raise GGUFConversionError(f"'{path}' is a GGUF adapter, not a base model; pass the model it adapts.")
    if arch not in GGUF_ARCHITECTURES:
        raise _unsupported(f"GGUF architecture '{arch}'", f"'{path}'")
    n_head = value(f"{arch}.attention.head_count")
    n_layer = value(f"{arch}.block_count")
    if not isinstance(n_head, int) or not isinstance(n_layer, int):
        raise GGUFConversionError(f"'{path}' lacks {arch}.attention.head_count or {arch}.block_count.")
    n_head_kv = value(f"{arch}.attention.head_count_kv")
    return BaseModelShape(
        architecture=arch,
        n_head=n_head,
        n_head_kv=n_head_kv if isinstance(n_head_kv, int) else n_head,
        n_layer=n_layer,
        has_output=any(t.name == OUTPUT_TENSOR for t in reader.tensors),
        source=f"GGUF file {path}",
        weight_shapes={
            t.name: (int(t.shape[1]), int(t.shape[0])) for t in reader.tensors if len(t.shape) == 2
        },
    )


def shape_from_config(config: dict[str, Any], source: str) -> BaseModelShape:
    """Describe a base model from its transformers config (the dict of its `config.json`)."""
    from transformers import AutoConfig

    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise _unsupported(f"'{model_type}'", source)
    arch, _ = ARCHITECTURES[model_type]
    # the config class fills what config.json leaves out with the model type's defaults (tying differs)
    fields = {k: v for k, v in config.items() if k != "model_type"}
    try:
        full = AutoConfig.for_model(model_type, **fields)
    except (TypeError, ValueError) as err:
        raise GGUFConversionError(f"{source} is not a valid {model_type} config: {err}") from err
    n_head = full.num_attention_heads
    return BaseModelShape(
        architecture=arch,
        n_head=n_head,
        n_head_kv=getattr(full, "num_key_value_heads", None) or n_head,
        n_layer=full.num_hidden_layers,
        has_output=not full.tie_word_embeddings and arch not in NO_OUTPUT_TENSOR,
        source=source,
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GGUFConversionError(f"'{path}' is not a readable JSON model config: {err}") from err
    if not isinstance(data, dict):
        raise GGUFConversionError(f"'{path}' does not hold a model config (a JSON object).")
    return data


def _hub_config(repo_id: str, local_files_only: bool) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    offline = local_files_only or hub_offline()
    try:
        return Path(hf_hub_download(repo_id, "config.json", local_files_only=offline))
    except (LocalEntryNotFoundError, HfHubHTTPError, HFValidationError, OSError) as err:
        where = "the Hub cache (offline)" if offline else "the Hub"
        raise GGUFConversionError(
            f"The base model '{repo_id}' is not a local path, and its config.json could not be read from "
            f"{where}: pass the base model explicitly (a model folder, its config.json, or the GGUF file the "
            "adapter will run on)."
        ) from err


def describe_base_model(base: str | os.PathLike, local_files_only: bool = False) -> BaseModelShape:
    """Describe the base model `base`: a GGUF file, a model folder, a `config.json`, or a Hub id."""
    spec = os.fspath(base)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return shape_from_gguf_file(path)
        return shape_from_config(_read_json(path), f"'{spec}'")
    if path.is_dir():
        if (path / "config.json").is_file():
            return shape_from_config(_read_json(path / "config.json"), f"'{spec}'")
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f" It holds GGUF files; pass one of them: {', '.join(ggufs)}." if ggufs else ""
        raise GGUFConversionError(f"The base model folder '{spec}' has no config.json.{hint}")
    if os.path.isabs(spec) or spec.startswith((".", "~")) or spec.count("/") != 1:
        raise GGUFConversionError(
            f"The base model '{spec}' does not exist (and it is not a Hub id 'org/name')."
        )
    return shape_from_config(_read_json(_hub_config(spec, local_files_only)), f"Hub model '{spec}'")
