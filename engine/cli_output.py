"""The CLI's output: a console that lets a closed pipe end the command quietly, tables that keep ids,
kinds, states and numbers whole (full values when piped), JSON/CSV/Markdown listings, and the argument
types that refuse numbers SQLite cannot hold. Used by ``engine.cli`` and its sub-command modules."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from engine.errors import FsatError
from engine.store import Store, default_db_path, new_database_notice


class _Console(Console):
    """rich's console, but a closed pipe reaches :func:`main` (rich would exit with status 1 itself)."""

    def on_broken_pipe(self) -> None:
        """Stop writing and let ``main`` end the command as a closed pipe ends one."""
        self.quiet = True
        raise BrokenPipeError


# Piped or in a file, a line is never wrapped at an assumed 80 columns.
console = _Console(soft_wrap=not sys.stdout.isatty())
err_console = _Console(stderr=True)


#: The largest integer SQLite stores: an id, limit, priority or fold past it can only be a typo.
SQLITE_MAX_INT = 2**63 - 1


def _whole(text: str) -> int:
    """An integer argument within SQLite's range (argparse reports anything else as a usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not -SQLITE_MAX_INT - 1 <= value <= SQLITE_MAX_INT:
        raise argparse.ArgumentTypeError(f"{text} is past the largest integer SQLite holds ({SQLITE_MAX_INT})")
    return value


def _seed(text: str) -> int:
    """A seed argument: numpy takes 0..2**32-1."""
    from engine.specs import SEED_MAX

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"a seed is a whole number in 0..{SEED_MAX}, got {text}")
    return value


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


#: Columns whose values are free text: the only ones a narrow terminal may narrow (their cells wrap).
_FREE_TEXT = ("name", "message", "note", "root", "path", "error", "class_name", "tags", "setting")
#: Columns a narrow terminal never leaves out (nor the first column, which names the row).
_KEPT = ("kind", "status", "cv_lwlrap")


def _table(title: str, rows: Sequence[dict], columns: Sequence[str], width: int | None = None) -> Table:
    """A rich table that fits ``width`` the way the console's tables do (``engine.tables.fit_columns``).

    Ids, kinds, states and numbers never shrink or wrap; free text narrows
    first and wraps; a column that still does not fit is left out, and the
    caption names it.
    """
    from engine.tables import FitColumn, fit_columns

    width = width or console.width
    cells = {c: [_fmt(r.get(c)) for r in rows] for c in columns}
    natural = {c: max([len(c)] + [len(v) for v in cells[c]]) for c in columns}
    fit = [FitColumn(c, natural[c], shrink=c in _FREE_TEXT, keep=i == 0 or c in _KEPT)
           for i, c in enumerate(columns)]
    # A column costs its width plus 3 cells (padding and its border); the table's left border 1 more.
    layout = dict(fit_columns(fit, width - 1, 3))
    shown = [c for c in columns if c in layout]
    left_out = [c for c in columns if c not in layout]
    caption = (f"left out for width: {', '.join(left_out)} (a wider terminal, a pipe or --json shows them)"
               if left_out else None)
    table = Table(title=title, header_style="bold cyan", caption=caption)
    for c in shown:
        numeric = bool(rows) and isinstance(rows[0].get(c), (int, float))
        if c in _FREE_TEXT:
            table.add_column(c, width=layout[c], overflow="fold")
        else:
            table.add_column(c, justify="right" if numeric else "left", no_wrap=True, width=layout[c])
    for i in range(len(rows)):
        table.add_row(*[cells[c][i] for c in shown])
    return table


def _print_table(title: str, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """A report's table: fitted in a terminal; piped or in a file, its title and every value in full."""
    if sys.stdout.isatty():
        console.print(_table(title, rows, columns))
    else:
        print(f"{title}:")
        print(_plain_table(rows, columns))


def _plain_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Aligned plain text with every value in full (for pipes and files: nothing cut, nothing wrapped)."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def _emit(args: argparse.Namespace, rows: Any, title: str, columns: Sequence[str]) -> None:
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    elif getattr(args, "csv", False):
        from engine.compare import table_csv

        sys.stdout.write(table_csv(rows, columns))
    elif getattr(args, "markdown", False):
        from engine.compare import table_markdown

        sys.stdout.write(table_markdown(rows, columns))
    elif not sys.stdout.isatty():
        print(_plain_table(rows, columns))
    else:
        console.print(_table(title, rows, columns))


def _listing_limit(args: argparse.Namespace) -> int | None:
    """Rows asked for: ``--all`` every row; ``--limit N``; else 100 in a terminal table, all for JSON/CSV."""
    if getattr(args, "all", False):
        return None
    if args.limit is not None:
        if args.limit < 1:
            raise FsatError(f"--limit must be 1 or more, got {args.limit}")
        return args.limit
    machine = args.json or getattr(args, "csv", False) or getattr(args, "markdown", False)
    return None if machine else DEFAULT_LISTING


#: Rows a terminal listing shows unless told otherwise.
DEFAULT_LISTING = 100


def _say_cut(shown: int, total: int, what: str) -> None:
    """Tell (on stderr, so JSON and CSV stay clean) that a listing holds fewer rows than match."""
    if shown < total:
        err_console.print(f"showing {shown} of {total} {what}; --limit N or --all for more", highlight=False)


def _open(args: argparse.Namespace, *, create: bool = True) -> Store:
    """Open the database for writing (creating it unless ``create`` is False; a new one is announced)."""
    path = args.db or default_db_path()
    notice = new_database_notice(path) if create else ""
    store = Store(path, create=create)
    if notice:
        err_console.print(f"fsat: {notice}", highlight=False, soft_wrap=True, markup=False)
    return store


def _read(args: argparse.Namespace) -> Store:
    """Open the database for reading: never waits on a writer, never creates or upgrades the file."""
    return Store(args.db or default_db_path(), readonly=True)
