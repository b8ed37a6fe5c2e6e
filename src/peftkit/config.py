"""Adapter configurations: the dataclass base every method's config extends, and its JSON round trip.

A config is written to `adapter_config.json` with PEFT's key names and enum spellings, so the same file
loads in `peft` and in peftkit. Reading tolerates keys written by newer versions: they are named in one
warning and dropped.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from ._version import __version__  # noqa: F401  (peft offers the package version here too)
from .utils.atomic_io import atomic_write_text
from .utils.constants import CONFIG_NAME
from .utils.hub import resolve_adapter_file
from .utils.json_fields import field_type_errors
from .utils.peft_types import PeftType, TaskType, coerce_task_type
from .utils.warnings import AdapterLoadError, MissingConfigKeysError, PeftError, PeftWarning

# The on-disk format we write is the one PEFT 0.21.2 reads; a new config's `peft_version` records that
# format, and a loaded one keeps the version it was written with (PEFT does the same).
PEFT_FORMAT_VERSION = "0.21.2"

# Fields that exist at run time only and are never written (PEFT leaves them out too).
_RUNTIME_ONLY_FIELDS = ("runtime_config",)

# PeftType -> its config class, filled by `register_peft_method`; kept on the config floor because
# `from_peft_type` reads it (peft code imports it from `peftkit.mapping`, which re-exports it)
PEFT_TYPE_TO_CONFIG_MAPPING: dict[PeftType, type[PeftConfig]] = {}


def as_set(value: Any) -> Any:
    """A list or tuple of module names as a set (how configs hold them); anything else (None, a regex
    string, a set) unchanged."""
    return set(value) if isinstance(value, (list, tuple)) else value


def _to_json_value(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, (list, tuple)):
        return [_to_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json_value(v) for k, v in value.items()}
    return value


@dataclass
class PeftConfigMixin:
    """The part of a config shared by every adapter kind: its type, and how it is written and read."""

    task_type: str | TaskType | None = field(
        default=None, metadata={"help": "The task type, e.g. CAUSAL_LM."}
    )
    peft_type: str | PeftType | None = field(default=None, metadata={"help": "The adapter method."})
    auto_mapping: dict | None = field(
        default=None, metadata={"help": "Set by AutoPeftModel; names the base model class (never imported)."}
    )
    peft_version: str | None = field(default=None, metadata={"help": "The PEFT format version of the file."})

    def __post_init__(self) -> None:
        self.task_type = coerce_task_type(self.task_type)
        if self.peft_version is None:
            self.peft_version = PEFT_FORMAT_VERSION
        if self.peft_type is not None and not isinstance(self.peft_type, PeftType):
            self.peft_type = PeftType(self.peft_type)

    # ----- dict / JSON -----
    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (enums and sets kept as they are in memory)."""
        return {k: v for k, v in asdict(self).items() if k not in _RUNTIME_ONLY_FIELDS}

    def to_json_dict(self) -> dict[str, Any]:
        """The config as `adapter_config.json` holds it: enum values as strings, sets as sorted lists."""
        return {k: _to_json_value(v) for k, v in self.to_dict().items()}

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write `adapter_config.json` into `save_directory` (atomically); kwargs override fields."""
        if os.path.isfile(save_directory):
            raise AssertionError(f"Provided path ({save_directory}) should be a directory, not a file")
        os.makedirs(save_directory, exist_ok=True)
        output = self.to_json_dict()
        output.update({k: _to_json_value(v) for k, v in kwargs.items()})
        text = json.dumps(output, indent=2, sort_keys=True) + "\n"
        atomic_write_text(os.path.join(save_directory, CONFIG_NAME), text)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_peft_type(cls, **kwargs: Any) -> PeftConfigMixin:
        """Build the config class that `kwargs["peft_type"]` names (or `cls` itself when it is concrete)."""
        return cls._class_for_peft_type(kwargs.get("peft_type"))._from_known_keys(kwargs)

    @classmethod
    def _class_for_peft_type(cls, peft_type: Any) -> type[PeftConfigMixin]:
        """The config class of `peft_type` (`cls` itself for None)."""
        if peft_type is None:
            return cls
        try:
            return PEFT_TYPE_TO_CONFIG_MAPPING[PeftType(peft_type)]
        except (KeyError, ValueError, TypeError):
            known = ", ".join(sorted(p.value for p in PEFT_TYPE_TO_CONFIG_MAPPING))
            raise ValueError(
                f"peft_type {peft_type!r} is not supported by peftkit; supported types: {known}."
            ) from None

    @classmethod
    def _from_known_keys(cls, kwargs: dict[str, Any]) -> PeftConfigMixin:
        known = cls.field_names()
        unknown = sorted(k for k in kwargs if k not in known and k not in _RUNTIME_ONLY_FIELDS)
        if unknown:
            warnings.warn(
                f"Unexpected keys in the {cls.__name__} config: {unknown}. They were probably written by a newer "
                "PEFT/peftkit version and are ignored; update peftkit if the adapter relies on them.",
                PeftWarning,
                stacklevel=3,
            )
        return cls(**{k: v for k, v in kwargs.items() if k in known})

    @classmethod
    def from_json_file(cls, path_json_file: str | os.PathLike) -> dict[str, Any]:
        """Read a config JSON file into a dict, with a clear error when it is not valid JSON."""
        try:
            with open(path_json_file, encoding="utf-8") as f:
                data = json.load(f)
        except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, deep nesting
            raise AdapterLoadError(
                f"{path_json_file} is not valid JSON ({type(err).__name__}: {err}); the adapter config is corrupt."
            ) from err
        if not isinstance(data, dict):
            raise AdapterLoadError(f"{path_json_file} must hold a JSON object, got {type(data).__name__}.")
        return data

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None, **kwargs: Any
    ) -> PeftConfigMixin:
        """Load a config from a local folder or a Hub repo id (`adapter_config.json`)."""
        hub_kwargs = {
            k: kwargs.pop(k) for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs
        }
        path = resolve_adapter_file(
            pretrained_model_name_or_path, CONFIG_NAME, subfolder=subfolder, **hub_kwargs
        )
        if path is None:
            where = os.path.join(str(pretrained_model_name_or_path), subfolder or "")
            raise ValueError(
                f"Can't find '{CONFIG_NAME}' at '{where}': this is not an adapter folder or repo. An adapter folder "
                "holds adapter_config.json and adapter_model.safetensors (written by save_pretrained)."
            )
        loaded = cls.from_json_file(path)
        loaded.update(kwargs)
        if "peft_type" not in loaded:
            # TypeError, as PEFT raises: this is most often a model's config.json or a hand-written file
            raise MissingConfigKeysError(
                f"The {cls.__name__} config that is trying to be loaded is missing required keys: {{'peft_type'}} "
                f"({path} is not a PEFT adapter config). Point from_pretrained at the adapter folder, whose "
                "adapter_config.json save_pretrained wrote, or pass the config's class and fields in code."
            )
        try:
            config_cls = cls._class_for_peft_type(loaded["peft_type"])
            wrong_types = field_type_errors(config_cls, loaded)
            if wrong_types:
                raise TypeError("; ".join(wrong_types))
            return config_cls._from_known_keys(loaded)
        except (TypeError, ValueError) as err:  # a value the config class refuses, named with its file
            if isinstance(err, PeftError):
                raise
            raise AdapterLoadError(f"{path} is not a valid adapter config: {err}") from err

    @classmethod
    def _get_peft_type(cls, model_id: str | os.PathLike, **hf_hub_download_kwargs: Any) -> str:
        """The `peft_type` recorded in the `adapter_config.json` of `model_id` (a folder or a Hub repo id;
        `subfolder=`, `revision=`, ... as for `from_pretrained`), as the string the file holds."""
        hub_kwargs = {
            k: v
            for k, v in hf_hub_download_kwargs.items()
            if k in ("subfolder", "revision", "cache_dir", "token", "local_files_only", "force_download")
        }
        path = resolve_adapter_file(model_id, CONFIG_NAME, **hub_kwargs)
        if path is None:
            raise ValueError(f"Can't find '{CONFIG_NAME}' at '{model_id}'")
        loaded = cls.from_json_file(path)
        if "peft_type" not in loaded:
            raise MissingConfigKeysError(
                f"{path} has no 'peft_type': it is not a PEFT adapter config (save_pretrained writes one)."
            )
        return loaded["peft_type"]

    def _prepare_for_loading(self, model_id: str, kwargs: dict[str, Any], hub_kwargs: dict[str, Any]) -> None:
        """Called by `PeftModel.from_pretrained` before the model is built, with the adapter's location,
        the keyword arguments nothing else took (a method pops its own, e.g. X-LoRA's `adapters=`) and the
        Hub arguments. Nothing to do by default."""

    # ----- kinds -----
    @property
    def is_prompt_learning(self) -> bool:
        """True for methods that add virtual tokens rather than adapt layers."""
        return False

    @property
    def is_adaption_prompt(self) -> bool:
        return False


@dataclass
class PeftConfig(PeftConfigMixin):
    """The base config of every adapter: which model it was made for, and whether it trains."""

    base_model_name_or_path: str | None = field(
        default=None, metadata={"help": "The name or path of the base model the adapter was trained on."}
    )
    revision: str | None = field(default=None, metadata={"help": "The base model's revision."})
    inference_mode: bool = field(default=False, metadata={"help": "Freeze the adapter (no training)."})


@dataclass
class PromptLearningConfig(PeftConfig):
    """The base config of the prompt-learning methods (prompt tuning, prefix tuning, P-tuning, multitask
    prompt tuning): trained virtual tokens, or key/value prefixes, in front of the input.

    `token_dim`, `num_layers`, `num_attention_heads` and `num_transformer_submodules` describe the base
    model; left as None, they are read from the model's config when the adapter is created.
    """

    num_virtual_tokens: int = field(default=None, metadata={"help": "Number of virtual tokens."})
    token_dim: int = field(
        default=None, metadata={"help": "The hidden embedding dimension of the base transformer model."}
    )
    num_transformer_submodules: int | None = field(
        default=None, metadata={"help": "Number of transformer submodules (2 for encoder-decoder models)."}
    )
    num_attention_heads: int | None = field(default=None, metadata={"help": "Number of attention heads."})
    num_layers: int | None = field(default=None, metadata={"help": "Number of transformer layers."})
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Modules besides the prompt encoder trained and saved (e.g. a classifier head)."},
    )

    @property
    def is_prompt_learning(self) -> bool:
        return True


def coerce_enum(enum_cls: type[enum.Enum], value: Any, field_name: str) -> enum.Enum:
    """`value` as a member of `enum_cls`, or a ValueError that lists the valid spellings."""
    if isinstance(value, enum_cls):
        return value
    try:
        return enum_cls(value)
    except ValueError:
        valid = ", ".join(m.value for m in enum_cls)
        raise ValueError(f"{field_name}={value!r} is not valid; use one of {valid}.") from None
