"""The runs table: a DataTable that diffs its rows so live updates touch only changed cells."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from advtui.tui.rows import COLUMNS, GROUP_PREFIX, Column, GroupRow, RunRow


FIRST_ROWS = 60  # rows added before the first paint (or the terminal's height, if taller)
MORE_ROWS = 200  # rows added per step after it


class RunsTable(DataTable):
    """Rows keyed by run id (or ``group:<name>`` for a seed group's header)."""

    BINDINGS = [
        Binding("s", "cycle_sort", "Sort", show=False),
        Binding("S", "reverse_sort", "Reverse sort", show=False),
    ]

    class SortChanged(Message):
        def __init__(self, column: str | None, reverse: bool) -> None:
            super().__init__()
            self.column, self.reverse = column, reverse

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._row_keys: list[str] = []  # every row, in order; the first ``_added`` are in the table
        self._rows: dict[str, RunRow | GroupRow | _Shown] = {}  # every row, by key
        self._cells: dict[str, dict[str, Any]] = {}  # the cells shown, for rows in the table
        self._added = 0
        self._generation = 0
        self.sort_column: str | None = None
        self.sort_reverse = False
        self.shown_columns: tuple[Column, ...] = COLUMNS

    def on_mount(self) -> None:
        self._add_columns()

    def _add_columns(self) -> None:
        for column in self.shown_columns:
            self.add_column(self._label(column), key=column.key, width=column.width)

    def use_columns(self, columns: tuple[Column, ...]) -> None:
        """Show these columns (all of them, or a narrow terminal's few), keeping rows and cursor."""
        if columns == self.shown_columns:
            return
        current = self.current_key
        self.shown_columns = columns
        self.clear(columns=True)
        self._add_columns()
        self._cells = {}
        self._added = 0
        self._generation += 1
        self._add_first_rows(current)

    # -- content ---------------------------------------------------------------------------
    @property
    def current_key(self) -> str | None:
        if not self._row_keys or self.cursor_row < 0 or self.cursor_row >= min(self._added, len(self._row_keys)):
            return None
        return self._row_keys[self.cursor_row]

    @property
    def row_keys(self) -> list[str]:
        return list(self._row_keys)

    def show_rows(self, arranged: list[RunRow | GroupRow]) -> None:
        """Show ``arranged``: update cells in place when the row order is unchanged, otherwise
        rebuild the rows and keep the cursor on the same run. Cells are built only for rows in
        the table: the rest take theirs when they are added."""
        keys = [r.key for r in arranged]
        rows = dict(zip(keys, arranged))
        if keys == self._row_keys:
            for key in keys[: self._added]:  # rows still to be added take the new cells then
                self._update_cells(key, self._cells.get(key, {}), _cells_of(rows[key]))
            self._rows = rows
            return
        current = self.current_key
        self.clear()
        self._row_keys = keys
        self._rows = rows
        self._cells = {}
        self._added = 0
        self._generation += 1
        self._add_first_rows(current)

    def _add_first_rows(self, current: str | None) -> None:
        keys = self._row_keys
        # DataTable measures every cell of every added row; with a thousand runs that is most
        # of the time to first paint. Rows past the first screenfuls are added in chunks after
        # the paint (the model behind the table, its filter and sort, always has every run).
        target = keys.index(current) if current in keys else 0
        first = max(FIRST_ROWS, self.app.size.height)  # at least a screenful
        self._add_rows(max(first, target + first))
        if current in keys:
            self.move_cursor(row=target, animate=False)
        if self._added < len(keys):
            self._schedule_more(self._generation)

    def update_rows(self, updates: dict[str, dict[str, Any]]) -> None:
        """New cells for some rows, order unchanged: only cells that differ are redrawn."""
        for key, cells in updates.items():
            if key not in self._rows:
                continue
            old = self._cells.get(key)
            if old is None:  # not added yet: it shows these cells when it is
                self._rows[key] = _Shown(key, cells)
                continue
            self._update_cells(key, old, cells)

    def _update_cells(self, key: str, old: dict[str, Any], cells: dict[str, Any]) -> None:
        shown = self.columns
        for column, value in cells.items():
            if column in shown and not _same(old.get(column), value):
                self.update_cell(key, column, value, update_width=False)
        self._cells[key] = cells

    def _add_rows(self, upto: int) -> None:
        order = [c.key for c in self.shown_columns]
        upto = min(upto, len(self._row_keys))
        for key in self._row_keys[self._added:upto]:
            cells = self._cells[key] = _cells_of(self._rows[key])
            self.add_row(*(cells[c] for c in order), key=key)
        self._added = max(self._added, upto)

    def _schedule_more(self, generation: int) -> None:
        def more() -> None:
            if generation != self._generation:
                return  # the rows were rebuilt meanwhile
            self._add_rows(self._added + MORE_ROWS)
            if self._added < len(self._row_keys):
                self._schedule_more(generation)

        # After the next refresh, so each chunk follows a paint and the screen stays live.
        self.call_after_refresh(more)

    def select_key(self, key: str) -> bool:
        """Move the cursor to the row ``key`` (adding rows up to it first); False if absent."""
        if key not in self._row_keys:
            return False
        index = self._row_keys.index(key)
        if index >= self._added:
            self._add_rows(index + 1)
        self.move_cursor(row=index, animate=False)
        return True

    @property
    def fully_loaded(self) -> bool:
        return self._added >= len(self._row_keys)

    # -- sorting ---------------------------------------------------------------------------
    def set_sort(self, column: str | None, reverse: bool) -> None:
        self.sort_column, self.sort_reverse = column, reverse
        for c in self.shown_columns:
            self.columns[c.key].label = Text(self._label(c))
        self.refresh()
        self.post_message(self.SortChanged(column, reverse))

    def _label(self, column: Column) -> str:
        if column.key == self.sort_column:
            return f"{column.label}{'▼' if self.sort_reverse else '▲'}"
        return column.label

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        column = str(event.column_key.value)
        if column == "mark":
            return
        reverse = (not self.sort_reverse) if column == self.sort_column else False
        self.set_sort(column, reverse)

    def action_cycle_sort(self) -> None:
        order = [c.key for c in self.shown_columns if c.key != "mark"]
        nxt = order[0] if self.sort_column not in order else order[(order.index(self.sort_column) + 1) % len(order)]
        self.set_sort(nxt, self.sort_reverse)

    def action_reverse_sort(self) -> None:
        self.set_sort(self.sort_column or "id", not self.sort_reverse)


class _Shown:
    """A row given as its cells (an update to a row not added yet)."""

    __slots__ = ("key", "cells")

    def __init__(self, key: str, cells: dict[str, Any]):
        self.key, self.cells = key, cells


def _cells_of(row: "RunRow | GroupRow | _Shown") -> dict[str, Any]:
    return row.cells() if isinstance(row, GroupRow) else row.cells


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Text) and isinstance(b, Text):
        return a.plain == b.plain and a.spans == b.spans and a.style == b.style
    return a == b


def is_group_key(key: str | None) -> bool:
    return bool(key) and key.startswith(GROUP_PREFIX)
