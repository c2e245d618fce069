"""A DataTable that is refreshed in place from store rows.

Live data arrives every few hundred milliseconds while a run trains. Rebuilding
the table each time would throw away what the user is looking at, so
``LiveTable.sync`` diffs the new rows against the shown ones (update changed
cells, add new rows, drop vanished ones), re-sorts, and puts the cursor back on
the row it was on, by key, wherever that row now sits.

Each cell is a ``Cell``: rich ``Text`` that also carries the raw value its
column sorts by, so a score column sorts numerically and "—" (missing) always
sorts last, whichever direction.

A table never shows a column in part (``engine.tables.fit_columns``, as the
CLI's tables): when its columns are wider than the table, free-text columns
(``ColumnSpec.shrink``: names, notes, messages) narrow first, down to their
``min_width``, with an ellipsis; then whole columns are hidden from the right,
never the first labelled one (it names the row) nor the one the table sorts
by. An id, a state or a number is never cut. The table keeps every cell of a
hidden column and shows it again when there is room.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from rich.text import Text
from textual.coordinate import Coordinate
from textual import events
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowKey

from engine.tables import FitColumn, fit_columns

if TYPE_CHECKING:
    from rich.console import JustifyMethod


class Cell(Text):
    """Display text plus the value the column sorts by (``None`` sorts last)."""

    def __init__(self, text: str = "", *, sort_key: Any = None, style: str = "",
                 justify: JustifyMethod | None = None) -> None:
        # A free-text cell narrowed to its column ends in an ellipsis, not mid-word.
        super().__init__(text, style=style, justify=justify, no_wrap=True, overflow="ellipsis")
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
    #: Free text (a name, a note, a message): the one kind of column a narrow table narrows, down to ``min_width``.
    shrink: bool = False
    min_width: int = 8


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
        #: Every row's cells in ``specs`` order, shown or not (a hidden column keeps its data).
        self._cells: dict[str, list[Cell]] = {}
        #: The widest cell (or label) seen per column: a column's natural width only grows.
        self._natural: dict[str, int] = {}
        #: The columns shown and their widths, as last laid out.
        self._layout: list[tuple[str, int]] = []

    def on_mount(self) -> None:
        """Add the columns (labels keep a slot for the sort arrow so widths never jump)."""
        self._ensure_columns()

    def on_resize(self, event: events.Resize) -> None:
        """Lay the columns out again for the new width."""
        self._relayout()

    def _ensure_columns(self) -> None:
        # Data may arrive before this widget's Mount handler has run.
        if not self.columns:
            self._layout = self._fit()
            specs = {spec.key: spec for spec in self.specs}
            for key, width in self._layout:
                self.add_column(self._label(specs[key]), key=key, width=width)

    # -- fitting the width ----------------------------------------------------------

    def _natural_width(self, spec: ColumnSpec) -> int:
        if spec.width is not None:
            return spec.width
        return max(len(spec.label) + 2, self._natural.get(spec.key, 0))

    def _room(self) -> int | None:
        """Cells the columns may take: the table's width less a vertical scrollbar (shown or to come)."""
        region = self.scrollable_content_region
        if region.width <= 0:
            return None
        scrollbar = 0 if self.show_vertical_scrollbar else self.styles.scrollbar_size_vertical
        return region.width - scrollbar

    def _fit(self) -> list[tuple[str, int]]:
        """The columns to show, left to right, with their widths (``engine.tables.fit_columns``)."""
        # Never hidden: the first labelled column (it names the row; a marker column has no label) and the sort.
        names = next((spec.key for spec in self.specs if spec.label.strip()), None)
        keep = {names, self.sort_column, self.rank_column}
        columns = [FitColumn(spec.key, self._natural_width(spec), shrink=spec.shrink, least=spec.min_width,
                             keep=spec.key in keep) for spec in self.specs]
        return fit_columns(columns, self._room(), 2 * self.cell_padding)

    def _relayout(self) -> None:
        """Apply :meth:`_fit`: new widths in place; a changed set of columns rebuilds the table from its cells."""
        if not self.columns:
            return
        layout = self._fit()
        if layout == self._layout:
            return
        if [k for k, _ in layout] == [k for k, _ in self._layout]:
            for key, width in layout:
                column = self.columns[ColumnKey(key)]
                column.width, column.auto_width = width, False
            self._layout = layout
            self._require_update_dimensions = True
            self.refresh()
            return
        order = self.keys_in_order()
        keep = self.selected_key()
        super().clear(columns=True)
        self._ensure_columns()
        for key in order:
            self.add_row(*self._shown_cells(self._cells[key]), key=key)
        self._apply_sort()
        if self.keys_in_order() != order:
            # The rows were not in the sort's order yet (their sort column had not been laid out): the row
            # under the cursor was only the first one added, not one the user chose. Show the top.
            self.move_cursor(row=0, animate=False)
            self.scroll_home(animate=False)
            return
        self._restore_cursor(keep)

    def _shown_cells(self, cells: Sequence[Cell]) -> list[Cell]:
        index = {spec.key: i for i, spec in enumerate(self.specs)}
        return [cells[index[key]] for key, _ in self._layout]

    @property
    def hidden_columns(self) -> list[str]:
        """Keys of the columns hidden for want of width."""
        shown = {key for key, _ in self._layout}
        return [spec.key for spec in self.specs if spec.key not in shown]

    def clear(self, columns: bool = False) -> "LiveTable":
        """Drop every row (and, with ``columns``, the columns: ``specs`` may have changed)."""
        super().clear(columns=columns)
        self._cells.clear()
        if columns:
            self._natural.clear()
            self._layout = []
        return self

    def get_cell(self, row_key: RowKey | str, column_key: ColumnKey | str) -> Any:
        """A cell by row and column key, whether its column is shown or hidden."""
        row = row_key.value if isinstance(row_key, RowKey) else row_key
        column = column_key.value if isinstance(column_key, ColumnKey) else column_key
        index = next((i for i, spec in enumerate(self.specs) if spec.key == column), None)
        if row in self._cells and index is not None:
            return self._cells[row][index]
        return super().get_cell(row_key, column_key)

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
        self._relayout()  # the sort column is always shown
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
            self._cells.pop(key, None)
        # Columns only grow: DataTable re-measured a whole column whenever an updated cell got narrower
        # (rows x changed cells per poll), and widths that jump back and forth are hard to read.
        grown = False
        for key, cells in rows:
            cells = list(cells)
            for spec, cell in zip(self.specs, cells):
                if spec.width is None and cell.cell_len > self._natural.get(spec.key, 0):
                    self._natural[spec.key] = cell.cell_len
                    grown = True
            current = self._cells.get(key)
            self._cells[key] = cells
            if current is None:
                self.add_row(*self._shown_cells(cells), key=key)
                continue
            shown = {k for k, _ in self._layout}
            for spec, old, new in zip(self.specs, current, cells):
                if spec.key in shown and not (isinstance(old, Cell) and old.same_as(new)):
                    self.update_cell(key, spec.key, new, update_width=False)
        if grown:
            self._relayout()
        self._apply_sort()
        self._restore_cursor(keep)

    def keys_in_order(self) -> list[str]:
        """Row keys top to bottom (what the user sees)."""
        return [self.coordinate_to_cell_key(Coordinate(i, 0)).row_key.value
                for i in range(self.row_count)]

    def column_texts(self, column: str) -> list[str]:
        """The plain text of one column, top to bottom (handy in tests and exports)."""
        return [str(getattr(self.get_cell(key, column), "plain", "")) for key in self.keys_in_order()]
