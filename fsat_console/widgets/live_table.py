"""A DataTable that is refreshed in place from store rows.

Live data arrives every few hundred milliseconds while a run trains. Rebuilding
the table each time would throw away what the user is looking at, so
``LiveTable.sync`` diffs the new rows against the shown ones (update changed
cells, add new rows, drop vanished ones), re-sorts, and puts the cursor back on
the row it was on, by key, wherever that row now sits.

Each cell is a ``Cell``: rich ``Text`` that also carries the raw value its
column sorts by, so a score column sorts numerically and "—" (missing) always
sorts last, whichever direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from rich.text import Text
from textual.coordinate import Coordinate
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey

if TYPE_CHECKING:
    from rich.console import JustifyMethod


class Cell(Text):
    """Display text plus the value the column sorts by (``None`` sorts last)."""

    def __init__(self, text: str = "", *, sort_key: Any = None, style: str = "",
                 justify: JustifyMethod | None = None) -> None:
        super().__init__(text, style=style, justify=justify)
        self.sort_key = sort_key

    def same_as(self, other: object) -> bool:
        """True when ``other`` would look and sort the same (Text equality ignores the base style)."""
        return (isinstance(other, Cell) and self.plain == other.plain and str(self.style) == str(other.style)
                and self._spans == other._spans and self.sort_key == other.sort_key)


def num_cell(text: str, value: float | int | None, style: str = "") -> Cell:
    """A right-aligned numeric cell."""
    return Cell(text, sort_key=value, style=style, justify="right")


@dataclass(frozen=True)
class ColumnSpec:
    """One column: its key, header label, and whether it first sorts high-to-low."""

    key: str
    label: str
    descending_first: bool = False
    sortable: bool = True
    width: int | None = None


class LiveTable(DataTable):
    """A row-cursor DataTable with keyed in-place refresh and key-press sorting."""

    def __init__(self, columns: Sequence[ColumnSpec], *, sort_column: str, reverse: bool = False,
                 id: str | None = None, classes: str | None = None, rank_column: str | None = None) -> None:
        """``rank_column`` (a column holding the row key) puts the table in server order: rows stay in
        the order ``sync`` gets them (sorted in SQL), and a local sort only bridges the moment until
        the database answers a new sort."""
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self.specs = list(columns)
        self.sort_column = sort_column
        self.sort_reverse = reverse
        self.rank_column = rank_column
        self._rank: dict[str, int] | None = None

    def on_mount(self) -> None:
        """Add the columns (labels keep a slot for the sort arrow so widths never jump)."""
        self._ensure_columns()

    def _ensure_columns(self) -> None:
        # Data may arrive before this widget's Mount handler has run.
        if not self.columns:
            for spec in self.specs:
                self.add_column(self._label(spec), key=spec.key, width=spec.width)

    # -- sorting ------------------------------------------------------------------

    def _label(self, spec: ColumnSpec) -> Text:
        arrow = " "
        if spec.key == self.sort_column:
            arrow = "▼" if self.sort_reverse else "▲"
        return Text(f"{spec.label} {arrow}")

    @property
    def sort_description(self) -> str:
        """E.g. ``CV LWLRAP ▼`` for the border title."""
        label = next((s.label for s in self.specs if s.key == self.sort_column), self.sort_column)
        return f"{label} {'▼' if self.sort_reverse else '▲'}"

    def set_sort(self, column: str, reverse: bool) -> None:
        """Sort by ``column`` (high-to-low when ``reverse``) and show the top of the new order.

        A sort the user asked for moves the cursor to the first row (they want
        to see what now leads); a live refresh instead keeps the cursor's row.
        """
        self.sort_column = column
        self.sort_reverse = reverse
        self._rank = None  # until the rows sorted by the database arrive
        for spec in self.specs:
            if ColumnKey(spec.key) in self.columns:
                self.columns[ColumnKey(spec.key)].label = self._label(spec)
        self._apply_sort()
        if self.row_count:
            self.move_cursor(row=0, animate=False)
            self.scroll_home(animate=False)

    def cycle_sort(self) -> None:
        """Sort by the next sortable column, in that column's natural direction."""
        keys = [s for s in self.specs if s.sortable]
        index = next((i for i, s in enumerate(keys) if s.key == self.sort_column), -1)
        spec = keys[(index + 1) % len(keys)]
        self.set_sort(spec.key, spec.descending_first)

    def reverse_sort(self) -> None:
        """Flip the direction of the current sort."""
        self.set_sort(self.sort_column, not self.sort_reverse)

    def sortable_keys(self) -> list[str]:
        """Keys of the columns that sort, left to right (what the digit keys choose from)."""
        return [s.key for s in self.specs if s.sortable]

    def sort_by(self, column: str) -> None:
        """Sort by ``column`` in its natural direction, or reverse it when it is already the sort."""
        spec = next((s for s in self.specs if s.key == column), None)
        if spec is None or not spec.sortable:
            return
        if column == self.sort_column:
            self.reverse_sort()
        else:
            self.set_sort(column, spec.descending_first)

    def _apply_sort(self) -> None:
        if not self.row_count:
            return
        if self._rank is not None and self.rank_column and ColumnKey(self.rank_column) in self.columns:
            rank = self._rank
            self._sort_if_needed(self.rank_column,
                                 lambda cell: rank.get(getattr(cell, "plain", str(cell)), len(rank)), False)
            return
        if ColumnKey(self.sort_column) not in self.columns:
            return
        reverse = self.sort_reverse

        def key(cell: Any) -> tuple:
            value = cell.sort_key if isinstance(cell, Cell) else cell
            # Missing values last in both directions.
            return (value is not None, value) if reverse else (value is None, value)

        self._sort_if_needed(self.sort_column, key, reverse)

    def _sort_if_needed(self, column: str, key: Any, reverse: bool) -> None:
        """``DataTable.sort``, only when it would move a row.

        Every sort throws away the table's rendered cells (it bumps the
        update count their cache is keyed on), so sorting after each poll
        re-rendered every visible cell even when nothing moved: the largest
        cost of painting the runs table and of opening a run.
        """
        shown = [row.key for row in self.ordered_rows]
        # The order DataTable.sort would give: a stable sort of the rows as they were added.
        wanted = sorted(self.rows, key=lambda row: key(self.get_cell(row, column)), reverse=reverse)
        if wanted != shown:
            self.sort(column, key=key, reverse=reverse)

    # -- rows -----------------------------------------------------------------------

    def selected_key(self) -> str | None:
        """The key of the row under the cursor, or None for an empty table."""
        if not self.row_count:
            return None
        row = min(self.cursor_row, self.row_count - 1)
        row_key, _ = self.coordinate_to_cell_key(Coordinate(row, 0))
        return row_key.value

    def _restore_cursor(self, key: str | None) -> None:
        if key is None or key not in self.rows:
            return
        index = self.get_row_index(key)
        if index != self.cursor_row:
            self.move_cursor(row=index, animate=False)

    def sync(self, rows: Sequence[tuple[str, Sequence[Cell]]]) -> None:
        """Show exactly ``rows`` (key, cells in column order), changing only what differs."""
        self._ensure_columns()
        keep = self.selected_key()
        wanted = {key for key, _ in rows}
        if self.rank_column:
            self._rank = {key: i for i, (key, _) in enumerate(rows)}
        for key in [k.value for k in self.rows if k.value not in wanted]:
            self.remove_row(key)
        for key, cells in rows:
            if key in self.rows:
                current = self.get_row(key)
                for spec, old, new in zip(self.specs, current, cells):
                    if not (isinstance(old, Cell) and old.same_as(new)):
                        # DataTable re-measures a whole column whenever an updated cell got
                        # narrower (rows x changed cells per poll). Columns only grow here: a
                        # fixed-width column never changes, an automatic one widens when needed.
                        self.update_cell(key, spec.key, new, update_width=False)
                        if spec.width is None:
                            self._grow_column(spec.key, new)
            else:
                self.add_row(*cells, key=key)
        self._apply_sort()
        self._restore_cursor(keep)

    def _grow_column(self, column: str, cell: Cell) -> None:
        width = max((len(line) for line in cell.plain.splitlines()), default=0)
        col = self.columns.get(ColumnKey(column))
        if col is not None and width > col.content_width:
            col.content_width = width
            self._require_update_dimensions = True
            self.refresh()

    def keys_in_order(self) -> list[str]:
        """Row keys top to bottom (what the user sees)."""
        return [self.coordinate_to_cell_key(Coordinate(i, 0)).row_key.value
                for i in range(self.row_count)]

    def column_texts(self, column: str) -> list[str]:
        """The plain text of one column, top to bottom (handy in tests and exports)."""
        return [str(getattr(c, "plain", c)) for c in self.get_column(column)]
