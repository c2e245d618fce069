"""Typed access from a screen, widget or palette provider to the console app that runs it."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.command import Provider
from textual.dom import DOMNode

if TYPE_CHECKING:
    from fsat_console.app import FsatConsole


def console(node: DOMNode | Provider) -> "FsatConsole":
    """The :class:`~fsat_console.app.FsatConsole` that ``node`` belongs to, typed.

    Screens, widgets and the palette's providers call ``console(self).store``
    rather than ``self.app.store``, which the type checker cannot follow: one
    cast here, checked attributes everywhere else.
    """
    return cast("FsatConsole", node.app)
