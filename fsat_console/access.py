"""Typed access from a screen or widget to the console app that runs it."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.dom import DOMNode

if TYPE_CHECKING:
    from fsat_console.app import FsatConsole


def console(node: DOMNode) -> "FsatConsole":
    """The :class:`~fsat_console.app.FsatConsole` that ``node`` belongs to, typed.

    Screens and widgets call ``console(self).store`` instead of
    ``self.app.store  # type: ignore``: one cast here, checked attributes everywhere else.
    """
    return cast("FsatConsole", node.app)
