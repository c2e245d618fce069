"""How a table's columns share a width: the console's tables and the CLI's terminal tables both fit this way.

A table is never shown with a column in part. When the columns are wider
than the room, free-text columns (names, notes, messages, class names) narrow
first, down to their least width; then whole columns are left out from the
right, never one marked ``keep`` (the column naming the row, the sort
column). Ids, kinds, states and numbers are never narrowed. Room left over
goes back to the free text. Standard library only: the console imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

__all__ = ["FitColumn", "fit_columns"]


@dataclass(frozen=True)
class FitColumn:
    """One column to fit: its natural width (widest cell or header) and whether it may narrow."""

    key: str
    natural: int
    #: Free text: may narrow to ``least`` (its cells wrap or end in an ellipsis).
    shrink: bool = False
    least: int = 8
    #: Never left out (it names the row, or the table sorts by it).
    keep: bool = False


def fit_columns(columns: Sequence[FitColumn], room: int | None, pad: int) -> list[tuple[str, int]]:
    """The columns to show, left to right, with their widths; each column also costs ``pad`` cells.

    ``room`` None (not known yet) shows every column at its natural width.
    """
    if room is None:
        return [(c.key, c.natural) for c in columns]
    least = {c.key: min(c.least, c.natural) if c.shrink else c.natural for c in columns}
    shown = list(columns)
    while sum(least[c.key] + pad for c in shown) > room:
        hideable = [c for c in shown if not c.keep]
        if not hideable:
            break
        shown.remove(hideable[-1])
    widths = {c.key: least[c.key] for c in shown}
    spare = room - sum(widths[c.key] + pad for c in shown)
    # What is left goes back to free text, a cell at a time to the column furthest below its natural width.
    while spare > 0:
        short = [c for c in shown if widths[c.key] < c.natural]
        if not short:
            break
        column = max(short, key=lambda c: (c.natural - widths[c.key]) / c.natural)
        widths[column.key] += 1
        spare -= 1
    return [(c.key, widths[c.key]) for c in shown]
