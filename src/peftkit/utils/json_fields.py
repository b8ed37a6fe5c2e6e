"""Checking the JSON types of a config file's values against the config dataclass's field annotations.

A corrupt or hand-edited `adapter_config.json` (`"r": "8"`, `"target_modules": 5`) would otherwise
surface as a TypeError deep inside torch while the layers are built. The check is lenient where PEFT
is: numbers are accepted for int and float fields alike (`lora_alpha` may be a float), enum fields take
their string values, Literal fields their values' type (the config validates the value itself), and an
annotation the check does not know accepts anything.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, Literal, Union

_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}


def _json_type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _fits(value: Any, annotation: Any) -> bool:
    """Whether JSON `value` can stand for a field annotated `annotation`."""
    if annotation is Any or annotation is typing.Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(annotation))
    if origin is Literal:
        return any(isinstance(value, type(arg)) for arg in typing.get_args(annotation))
    if origin in (list, tuple, set, frozenset):
        args = typing.get_args(annotation)
        item = args[0] if args else Any
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if origin is dict:
        item = (typing.get_args(annotation) or (Any, Any))[-1]
        return isinstance(value, dict) and all(_fits(v, item) for v in value.values())
    if annotation is type(None):
        return value is None
    if annotation in (int, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation in (list, tuple, set):
        return isinstance(value, list)
    if annotation is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return isinstance(value, str)
    if dataclasses.is_dataclass(annotation):
        return isinstance(value, dict)
    return True  # an annotation this check does not know


def field_type_errors(config_cls: type, values: dict[str, Any]) -> list[str]:
    """One line per value in `values` whose JSON type does not fit `config_cls`'s field of that name
    (fields the class does not have are left to the caller)."""
    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # an annotation that does not resolve: nothing to check against
        return []
    errors = []
    for field in dataclasses.fields(config_cls):
        if values.get(field.name, ...) is None and field.default is None:
            continue  # the field's own default (PEFT declares some such fields `int = None`)
        if field.name in values and field.name in hints and not _fits(values[field.name], hints[field.name]):
            value = values[field.name]
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            errors.append(
                f"'{field.name}' is {_json_type_name(value)} ({shown}), expected {hints[field.name]}"
            )
    return errors
