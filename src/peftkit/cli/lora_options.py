"""LoRA options for `peftkit train`: one flag per `LoraConfig` field, or a JSON/YAML file of fields.

The flags are generated from the dataclass, so every option peftkit's `LoraConfig` has is available
(`--r 16 --lora-alpha 32 --target-modules q_proj v_proj --use-dora`), with the same defaults as
`LoraConfig`. A file given with `--lora-config` is read first; flags on the command line override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
import typing
from pathlib import Path
from typing import Any

from .errors import CliError, missing_extra

# Fields the CLI sets itself (or that describe a saved file) and so are not flags.
_NOT_OPTIONS = (
    "task_type",
    "peft_type",
    "auto_mapping",
    "peft_version",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "runtime_config",
)
_REGEX_CHARS = re.compile(r"[.*+?^$|()\[\]{}\\]")
_DEST = "lora__"  # prefix of the argparse destinations, keeping LoRA options apart from the others
# names people often use for LoraConfig fields (other libraries' spellings), for "did you mean"
_ALIASES = {"rank": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "targets": "target_modules"}


def _lora_fields() -> list[tuple[dataclasses.Field, Any]]:
    from ..tuners.lora.config import LoraConfig

    hints = typing.get_type_hints(LoraConfig)
    return [(f, hints[f.name]) for f in dataclasses.fields(LoraConfig) if f.name not in _NOT_OPTIONS]


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(
            f"expected JSON (e.g. '{{\"q_proj\": 16}}'), got {text!r}: {err.msg}"
        ) from err


def _parse_bool_or_str(text: str) -> bool | str:
    lowered = text.lower()
    return lowered == "true" if lowered in ("true", "false") else text


def _kind(tp: Any) -> str:
    """How a field's values are given on the command line."""
    args = set(typing.get_args(tp)) - {type(None)}
    if tp in (int, float):
        return tp.__name__
    if tp is bool:
        return "bool"
    if typing.get_origin(tp) is typing.Literal:
        return "choice"
    if args == {bool, str}:
        return "bool_or_str"
    if args == {str}:
        return "str"
    if list[str] in args and args <= {list[str], str}:
        return "names"  # a list of names, or one regex / "all-linear"
    if list[int] in args and args <= {list[int], int}:
        return "ints"
    return "json"


def add_lora_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--lora-config` and one flag per LoraConfig field (in an argument group)."""
    group = parser.add_argument_group(
        "LoRA options",
        "LoraConfig fields (same names and defaults as peft's LoraConfig; task_type is CAUSAL_LM)",
    )
    group.add_argument(
        "--lora-config",
        metavar="FILE",
        help="a JSON or YAML file of LoraConfig fields; flags override it (default: none)",
    )
    for f, tp in _lora_fields():
        kind = _kind(tp)
        flags = ["--" + f.name.replace("_", "-")] + (["--rank"] if f.name == "r" else [])
        help_text = f.metadata.get("help", "")
        options: dict[str, Any] = {"dest": _DEST + f.name, "default": argparse.SUPPRESS}
        if kind in ("int", "float"):
            options.update(type=int if kind == "int" else float, metavar="N" if kind == "int" else "X")
        elif kind == "bool":
            options.update(nargs="?", const=True, type=_parse_bool, metavar="BOOL")
        elif kind == "choice":
            options["choices"] = typing.get_args(tp)
        elif kind == "bool_or_str":
            options.update(type=_parse_bool_or_str, metavar="VALUE")
        elif kind == "str":
            options["metavar"] = "TEXT"
        elif kind == "names":
            options.update(nargs="+", metavar="NAME")
            help_text += " (several names, or one regex, or all-linear)" if str in typing.get_args(tp) else ""
        elif kind == "ints":
            options.update(nargs="+", type=int, metavar="N")
        elif kind == "json":
            options.update(type=_parse_json, metavar="JSON")
        help_text = (help_text or f"LoraConfig.{f.name} ({kind})").replace("%", "%%")
        group.add_argument(*flags, help=f"{help_text} (default: {_default_text(f)})", **options)


def _default_text(f: dataclasses.Field) -> str:
    """LoraConfig's default for a field, as the help shows it (with '%' escaped for argparse)."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    text = "none" if value is None else json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return text.replace("%", "%%")


def _from_flags(args: argparse.Namespace) -> dict[str, Any]:
    kinds = {f.name: _kind(tp) for f, tp in _lora_fields()}
    values: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if not dest.startswith(_DEST):
            continue
        name = dest[len(_DEST) :]
        if kinds[name] == "names" and len(value) == 1 and str in typing.get_args(_hint(name)):
            # one value: "all-linear" and regexes stay strings (peft reads a string as a full-match regex)
            single = value[0]
            value = single if single == "all-linear" or _REGEX_CHARS.search(single) else value
        values[name] = value
    return values


def _hint(name: str) -> Any:
    return dict((f.name, tp) for f, tp in _lora_fields())[name]


def read_options_file(path: str | Path) -> dict[str, Any]:
    """The LoraConfig fields in a JSON or YAML file (an `adapter_config.json` of a LoRA adapter works too)."""
    path = Path(path)
    if not path.is_file():
        raise CliError(f"The LoRA config file '{path}' does not exist.")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise missing_extra("pyyaml", "yaml", "Reading a YAML config file") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise CliError(f"{path} is not valid YAML: {err}") from err
    elif path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CliError(f"{path} is not valid JSON: {err}") from err
    else:
        raise CliError(f"The LoRA config file '{path}' must end in .json, .yaml or .yml.")
    if not isinstance(data, dict):
        raise CliError(f"{path} must hold a mapping of LoraConfig fields, got {type(data).__name__}.")
    peft_type = data.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise CliError(f"{path} describes a {peft_type} adapter; `peftkit train` trains LoRA adapters only.")
    known = {f.name for f, _ in _lora_fields()}
    for key in data:
        if key not in known and key not in _NOT_OPTIONS:
            close = [_ALIASES[key]] if key in _ALIASES else difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else f" Known fields: {', '.join(sorted(known))}."
            raise CliError(f"{path}: '{key}' is not a LoraConfig field.{hint}")
    return {k: v for k, v in data.items() if k in known}


def _make_config(values: dict[str, Any]) -> Any:
    from ..tuners.lora.config import LoraConfig

    try:
        return LoraConfig(task_type="CAUSAL_LM", **values)
    except (TypeError, ValueError) as err:
        raise CliError(f"Invalid LoRA options: {err}") from err


def build_lora_config(args: argparse.Namespace, checkpoint: Path | None = None) -> Any:
    """The LoraConfig for a causal LM from `--lora-config` (if any) and the LoRA flags.

    Resuming from `checkpoint`, the checkpoint's own settings are used, and a setting given that differs
    from them is a CliError naming the flag, the checkpoint's value, and the two ways on.
    """
    given = read_options_file(args.lora_config) if getattr(args, "lora_config", None) else {}
    from_file = set(given)
    given.update(_from_flags(args))
    if checkpoint is None:
        return _make_config(given)
    saved_values = read_options_file(checkpoint / "adapter_config.json")
    saved = _make_config(saved_values)
    differing = []
    for name, value in given.items():
        if getattr(_make_config({**saved_values, name: value}), name) != getattr(saved, name):
            where = " (from --lora-config)" if name in from_file and name not in _from_flags(args) else ""
            differing.append(
                f"--{name.replace('_', '-')} {value!r}{where} (the checkpoint has {getattr(saved, name)!r})"
            )
    if differing:
        raise CliError(
            f"{'; '.join(differing)}: differs from {checkpoint}, which this run resumes. To resume, drop it (a resumed "
            "run takes the checkpoint's LoRA settings); to train with it, start fresh: drop --resume and pass "
            "--overwrite (or another --output-dir)."
        )
    return saved
