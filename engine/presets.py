"""Presets and overrides: TOML files under ``configs/`` (with ``extends``) and ``key=value`` patches.

``resolve_spec`` is the one way from a preset or config file plus overrides to
a validated spec (``engine.specs``); errors name the preset, file or override
that set the bad field. Standard library only: the console uses it.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.specs import from_dict, spec_class


def configs_dirs() -> list[Path]:
    """Where presets are looked up: $FSAT_CONFIGS, ./configs, then the project's configs/."""
    dirs = []
    if os.environ.get("FSAT_CONFIGS"):
        dirs.append(Path(os.environ["FSAT_CONFIGS"]))
    dirs.append(Path.cwd() / "configs")
    dirs.append(Path(__file__).resolve().parent.parent / "configs")
    seen, out = set(), []
    for d in dirs:
        key = d.resolve() if d.exists() else d
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def list_presets(kind: str | None = None) -> dict[str, Path]:
    """Preset name -> file, first directory wins; only presets of ``kind`` when given."""
    found: dict[str, Path] = {}
    for d in configs_dirs():
        if d.is_dir():
            for p in sorted(d.glob("*.toml")):
                found.setdefault(p.stem, p)
    if kind is not None:
        found = {name: p for name, p in found.items() if preset_kind(p) == kind}
    return found


def preset_kind(path: Path | str) -> str:
    """The job kind a preset file is for: its ``kind`` key, following ``extends``; default ``train``."""
    try:
        return str(load_preset_file(path).get("kind", "train"))
    except ConfigError:
        return "train"


def read_toml(path: Path | str) -> dict:
    """Read a TOML file; a syntax error names the file and line."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("no such config file", file=path) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"not valid TOML: {err}", file=path) from None


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_preset_file(path: Path | str, _seen: tuple[str, ...] = ()) -> dict:
    """Read a preset; ``extends = "NAME"`` first loads preset NAME and lays this file over it."""
    path = Path(path)
    data = read_toml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"expected a preset name, got {parent!r}", field="extends", file=path)
    if parent in _seen:
        raise ConfigError(f"presets extend each other in a loop: {' -> '.join(_seen + (parent,))}",
                          field="extends", file=path)
    return _deep_merge(load_preset_file(preset_path(parent), _seen + (parent,)), data)


def preset_path(name: str) -> Path:
    """The file of a named preset; ConfigError lists the known names."""
    presets = list_presets()
    if name not in presets:
        known = ", ".join(sorted(presets)) or "none found"
        raise ConfigError(f"unknown preset {name!r} (known: {known})", field="preset")
    return presets[name]


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b=value``; the value is read as TOML (numbers, booleans, lists) or else a string."""
    if "=" not in text:
        raise ConfigError(f"expected key=value, got {text!r}", field="--set")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"bad key in {text!r}", field="--set")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of ``data`` with ``key=value`` overrides applied at their dotted paths."""
    out = json.loads(json.dumps(data))
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{part!r} is a value, not a section", field=".".join(parts))
            node = nxt
        node[parts[-1]] = value
    return out


def resolve_spec(kind: str, *, preset: str | None = None, config: Path | str | None = None,
                 overrides: list[str] | None = None, data_root: str | None = None) -> Any:
    """Build a validated spec of ``kind`` from a preset or config file plus overrides."""
    cls = spec_class(kind)
    source: Path | None = None
    data: dict = {}
    if preset and config:
        raise ConfigError("give either a preset or a config file, not both", field="preset")
    if preset:
        source = preset_path(preset)
    elif config:
        source = Path(config)
    if source is not None:
        data = load_preset_file(source)
    if data_root:
        data = apply_overrides(data, [f"data.root={json.dumps(str(Path(data_root).resolve()))}"])
    data = apply_overrides(data, overrides or [])
    try:
        return from_dict(cls, data, source=source)
    except ConfigError as err:
        blamed = override_for(err.field, overrides or [])
        if blamed is None:
            raise
        # The value came from the command line, not from the preset file.
        raise ConfigError(err.reason, field=err.field, file=f"--set {blamed}") from None


def override_for(field: str | None, overrides: list[str]) -> str | None:
    """The last ``key=value`` override that set ``field`` (or a section holding it), else None."""
    if not field:
        return None
    field = re.sub(r"\[\d+\]", "", field)
    for text in reversed(overrides):
        key = text.split("=", 1)[0].strip()
        if field == key or field.startswith(key + ".") or key.startswith(field + "."):
            return text
    return None
