"""The runs table: a DataTable that diffs its rows so live updates touch only changed cells."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from advtui.tui.rows import COLUMNS, GROUP_PREFIX, GroupRow, RunRow


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
        self._row_keys: list[str] = []
        self._cells: dict[str, dict[str, Any]] = {}
        self.sort_column: str | None = None
        self.sort_reverse = False

    def on_mount(self) -> None:
        for column in COLUMNS:
            self.add_column(column.label, key=column.key, width=column.width)

    # -- content ---------------------------------------------------------------------------
    @property
    def current_key(self) -> str | None:
        if not self._row_keys or self.cursor_row < 0 or self.cursor_row >= len(self._row_keys):
            return None
        return self._row_keys[self.cursor_row]

    @property
    def row_keys(self) -> list[str]:
        return list(self._row_keys)

    def show_rows(self, arranged: list[RunRow | GroupRow]) -> None:
        """Show ``arranged``: update cells in place when the row order is unchanged, otherwise
        rebuild the rows and keep the cursor on the same run."""
        keys = [r.key for r in arranged]
        cells = {k: (r.cells() if isinstance(r, GroupRow) else r.cells) for k, r in zip(keys, arranged)}
        if keys == self._row_keys:
            for key in keys:
                old = self._cells.get(key, {})
                for column, value in cells[key].items():
                    if not _same(old.get(column), value):
                        self.update_cell(key, column, value, update_width=False)
            self._cells = cells
            return
        current = self.current_key
        self.clear()
        self._row_keys = keys
        self._cells = cells
        self.add_rows_keyed(keys, cells)
        if current in keys:
            self.move_cursor(row=keys.index(current), animate=False)

    def add_rows_keyed(self, keys: list[str], cells: dict[str, dict[str, Any]]) -> None:
        order = [c.key for c in COLUMNS]
        for key in keys:
            self.add_row(*(cells[key][c] for c in order), key=key)

    # -- sorting ---------------------------------------------------------------------------
    def set_sort(self, column: str | None, reverse: bool) -> None:
        self.sort_column, self.sort_reverse = column, reverse
        for c in COLUMNS:
            label = c.label
            if c.key == column:
                label = f"{c.label}{'▼' if reverse else '▲'}"
            self.columns[c.key].label = Text(label)
        self.refresh()
        self.post_message(self.SortChanged(column, reverse))

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        column = str(event.column_key.value)
        if column == "mark":
            return
        reverse = (not self.sort_reverse) if column == self.sort_column else False
        self.set_sort(column, reverse)

    def action_cycle_sort(self) -> None:
        order = [c.key for c in COLUMNS if c.key != "mark"]
        nxt = order[0] if self.sort_column not in order else order[(order.index(self.sort_column) + 1) % len(order)]
        self.set_sort(nxt, self.sort_reverse)

    def action_reverse_sort(self) -> None:
        self.set_sort(self.sort_column or "id", not self.sort_reverse)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Text) and isinstance(b, Text):
        return a.plain == b.plain and a.spans == b.spans and a.style == b.style
    return a == b


def is_group_key(key: str | None) -> bool:
    return bool(key) and key.startswith(GROUP_PREFIX)
