"""Plain data to typed dataclasses: names and types checked, errors that name the dotted field.

``from_dict`` builds a nested dataclass (a job spec of ``engine.specs``) from
JSON or TOML data, refusing unknown keys and wrong types with a
``ConfigError`` naming the field (``train.lr``, ``stages[1].loss``); then every
section's own ``validate`` runs. Standard library only.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Union, get_args, get_origin, get_type_hints

from engine.errors import ConfigError

__all__ = ["from_dict", "validate"]


def from_dict(cls: type, data: dict, *, path: str = "", source: object | None = None) -> Any:
    """Build a (nested) spec dataclass from plain data, checking names and types.

    Unknown keys and wrong types raise ConfigError naming the dotted field.
    Section ``validate`` methods run afterwards.
    """
    obj = _build(cls, data, path, source)
    validate(obj, source=source)
    return obj


def validate(spec: Any, *, source: object | None = None, path: str = "") -> None:
    """Run every section's range checks; ConfigError names the field."""
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        sub = f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(value):
            validate(value, source=source, path=sub)
    if hasattr(spec, "validate"):
        try:
            spec.validate(path or spec.__class__.__name__)
        except ConfigError as err:
            if source is not None and err.file is None:
                raise ConfigError(err.reason, field=err.field, file=source) from None
            raise


def _build(cls: type, data: Any, path: str, source: object | None) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"expected a table of settings, got {type(data).__name__}",
                          field=path or None, file=source)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else key
        if key == "kind" and not path:
            kind = getattr(cls, "KIND", None)
            if value != kind:
                raise ConfigError(f"this preset is for {value!r} jobs, not {kind!r}", field="kind", file=source)
            continue
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown setting (known here: {known})", field=sub, file=source)
        kwargs[key] = _coerce(hints[key], value, sub, source)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str, source: object | None) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, source)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for option in get_args(tp):
            try:
                return _coerce(option, value, path, source)
            except ConfigError as err:
                errors.append(str(err))
        names = " or ".join(_type_name(a) for a in get_args(tp))
        raise ConfigError(f"expected {names}, got {value!r}", field=path, file=source)
    if origin is list:
        (item_type,) = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected a list of {_type_name(item_type)}, got {value!r}", field=path, file=source)
        return [_coerce(item_type, v, f"{path}[{i}]", source) for i, v in enumerate(value)]
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"expected none, got {value!r}", field=path, file=source)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"expected true or false, got {value!r}", field=path, file=source)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"expected a whole number, got {value!r}", field=path, file=source)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"expected a number, got {value!r}", field=path, file=source)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"expected a string, got {value!r}", field=path, file=source)
    return value


def _type_name(tp: Any) -> str:
    return {int: "a whole number", float: "a number", str: "a string", bool: "true/false", type(None): "none"}.get(
        tp, getattr(tp, "__name__", str(tp)))
