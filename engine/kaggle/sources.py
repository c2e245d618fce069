"""The project's own modules a kernel needs, found from its imports, and the libraries they pin.

The pack embeds ``engine.kaggle.kernel`` and every project module it can
reach through an ``import`` statement anywhere in a module (inside
functions too: the lazy imports run in the kernel as well), with the
``__init__.py`` of each package on the way. The files are copied from this
checkout at pack time, byte for byte, so the kernel runs the code the runs
were made with; nothing is written by hand into the kernel.

The third-party top-level modules those files import are mapped to their
distributions (``importlib.metadata.packages_distributions``) and pinned to
the versions installed here: the kernel prints any that differ on Kaggle's
image, and the rehearsal checks them.
"""

from __future__ import annotations

import ast
import sys
from importlib import metadata
from pathlib import Path

import engine

__all__ = ["KERNEL_MODULE", "module_closure", "module_path", "pinned_requirements"]

KERNEL_MODULE = "engine.kaggle.kernel"
ROOT_PACKAGE = "engine"
#: The project's root folder (the one holding ``engine/``).
PROJECT_ROOT = Path(engine.__file__).resolve().parent.parent


def module_path(name: str) -> Path:
    """The source file of a project module (a package's ``__init__.py``)."""
    base = PROJECT_ROOT.joinpath(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _is_module(name: str) -> bool:
    return module_path(name).is_file()


def _imports(path: Path, name: str) -> tuple[set[str], set[str]]:
    """Project modules and third-party top-level names imported anywhere in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    ours, theirs = set(), set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[:len(parent) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            top = target.split(".")[0]
            if top == ROOT_PACKAGE:
                # Keep the longest prefix that is a module: `from engine.x import y` names a module or a symbol.
                parts = target.split(".")
                while parts and not _is_module(".".join(parts)):
                    parts.pop()
                if parts:
                    ours.add(".".join(parts))
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                theirs.add(top)
    return ours, theirs


def module_closure(roots: tuple[str, ...] = (KERNEL_MODULE,)) -> tuple[list[str], set[str]]:
    """Every project module reachable from ``roots`` (with their packages), and the third-party names they import."""
    seen: set[str] = set()
    third: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        for i in range(1, len(parts)):
            todo.append(".".join(parts[:i]))
        ours, theirs = _imports(module_path(name), name)
        third |= theirs
        todo.extend(ours - seen)
    return sorted(seen), third


def pinned_requirements(top_level: set[str]) -> dict[str, str]:
    """Distribution -> installed version for the third-party top-level module names (unknown ones left out)."""
    owners = metadata.packages_distributions()
    pins: dict[str, str] = {}
    for name in sorted(top_level):
        for dist in owners.get(name, []):
            try:
                pins[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
    return pins
