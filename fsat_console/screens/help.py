"""``?``: every key and what it does, and where the data lives.

The key tables are built from the screens' own BINDINGS, so help can never
fall out of step with the footer.
"""

from __future__ import annotations

from typing import Sequence

from rich.table import Table
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

#: (section title, [(keys, what it does)])
HelpSection = tuple[str, Sequence[tuple[str, str]]]


def binding_rows(app: App, bindings: Sequence[Binding | tuple]) -> list[tuple[str, str]]:
    """(keys as shown in the footer, long description) for each binding."""
    rows: list[tuple[str, str]] = []
    for b in bindings:
        binding = b if isinstance(b, Binding) else Binding(*b)
        keys = " / ".join(
            binding.key_display or app.get_key_display(Binding(k.strip(), binding.action))
            for k in binding.key.split(","))
        text = binding.tooltip or binding.description
        if rows and rows[-1][1] == text:  # keys 1…9 that do the same thing share one line
            first = rows[-1][0].split("…")[0]
            rows[-1] = (f"{first}…{keys}", text)
            continue
        rows.append((keys, text))
    return rows


def help_table(sections: Sequence[HelpSection]) -> Table:
    """All sections in one two-column table with section headings."""
    table = Table.grid(padding=(0, 2))
    table.add_column(justify="right", style="bold", min_width=12)
    table.add_column()
    for i, (title, rows) in enumerate(sections):
        if i:
            table.add_row("", "")
        table.add_row("", Text(title, style="bold underline"))
        for keys, text in rows:
            table.add_row(Text(keys, style="bold cyan"), text)
    return table


class HelpScreen(ModalScreen[None]):
    """Keys by screen, then the database, worker log and data root in use."""

    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def __init__(self, sections: Sequence[HelpSection], where: Sequence[tuple[str, str]]) -> None:
        super().__init__()
        self.sections = sections
        self.where = where

    def compose(self) -> ComposeResult:
        """Title, keys, locations."""
        with Vertical(id="help-dialog", classes="dialog wide-dialog tall-dialog"):
            yield Static("fsat-console — keys", classes="dialog-title")
            where = Table.grid(padding=(0, 2))
            where.add_column(justify="right", style="dim", min_width=12)
            where.add_column()
            for label, value in self.where:
                where.add_row(label, Text(value, style="bold"))
            yield Static(where, id="help-where")
            with VerticalScroll(classes="dialog-scroll", id="help-scroll"):
                yield Static(help_table(self.sections), id="help-keys")
            yield Static("[b]↑↓[/b] scroll   [b]esc[/b] / [b]?[/b] close", classes="dialog-keys")

    def on_mount(self) -> None:
        """Arrow keys scroll the key list."""
        self.query_one("#help-scroll").focus()

    def action_close(self) -> None:
        """Close help."""
        self.dismiss(None)
