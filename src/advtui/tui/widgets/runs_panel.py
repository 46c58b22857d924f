"""The runs panel: the store's damage notice, the filter box and the runs table, with the
model behind them (records, rows, marks, filter, collapsed groups).

It never reads the disk: the main screen's workers read the registry and the streams and hand
the results to ``show_records`` / ``show_changed`` on the UI thread. Moving the cursor posts
``RunsPanel.Selected``; the main screen redraws the plots panel from it.
"""

from __future__ import annotations

from typing import Any, Callable

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Input, Static

from advtui.core.memory import FREEZE_MIN_RUNS, cyclic_gc_paused, freeze_long_lived
from advtui.tui.live import RunStream
from advtui.tui.rows import GROUP_PREFIX, GroupRow, RunRow, arrange, run_row
from advtui.tui.rows import shown_status
from advtui.tui.widgets.runs_table import RunsTable, is_group_key
from advtui.tui.widgets.system_panel import set_titles

# Sorting by one of these columns reorders the table as runs progress.
LIVE_COLUMNS = ("progress", "loss", "clean", "robust", "elapsed", "eta")
FILTER_HINT = "filter: words or field:value, e.g. status:running defense:rnn (esc clears)"


class RunsPanel(Vertical):
    class Selected(Message):
        """The cursor moved to another run (or to a group, standing for its first run)."""

        def __init__(self, run_id: str | None) -> None:
            super().__init__()
            self.run_id = run_id

    def __init__(self, peek: Callable[[str], RunStream | None], clock: Callable[[], float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._peek, self._now = peek, clock
        self.records: dict[str, dict] = {}
        self.rows: dict[str, RunRow] = {}
        self.marked: set[str] = set()
        self.collapsed: set[str] = set()
        self.filter_text = ""
        self.selected: str | None = None
        self.damage: list[str] = []  # what the store said it could not read, one line each
        self._arranged: list[RunRow | GroupRow] | None = None  # the table's rows, in order
        self._table: RunsTable | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="damage")
        yield Input(placeholder=FILTER_HINT, id="filter")
        yield RunsTable(id="runs")

    @property
    def table(self) -> RunsTable:
        if self._table is None:
            self._table = self.query_one(RunsTable)
        return self._table

    # -- data in -----------------------------------------------------------------------------
    def show_records(self, records: dict[str, dict]) -> None:
        """The registry's runs as just read: every row is rebuilt (lazily: cells are made for
        the rows shown)."""
        first = not self.records and not self.rows
        self.records = records
        self.marked &= set(records)
        now, peek, marked = self._now(), self._peek, self.marked
        # Thousands of small objects, none in a cycle (see core.memory); the first rows of a
        # large store live as long as its first records, frozen with them.
        with cyclic_gc_paused():
            self.rows = {rid: run_row(r, peek(rid), rid in marked, now) for rid, r in records.items()}
            if first and len(records) >= FREEZE_MIN_RUNS:
                freeze_long_lived()
        self.refresh_table()

    def show_changed(self, changed: set[str]) -> None:
        """New stream data (or a moving clock) for ``changed`` runs; running runs always move."""
        now = self._now()
        running = {rid for rid, r in self.records.items() if r.get("status") == "running"}
        for rid in changed | running:
            if rid in self.records:
                self.rows[rid] = run_row(self.records[rid], self._peek(rid), rid in self.marked, now)
        self.refresh_table(changed | running)

    def show_damage(self, lines: list[str]) -> None:
        """The store's one-line messages for files it could not read (none: the notice hides)."""
        if lines == self.damage:
            return
        self.damage = list(lines)
        notice = self.query_one("#damage", Static)
        notice.display = bool(lines)
        if lines:
            text = Text("damaged registry: ", style="bold red")
            if len(lines) > 1:
                text.append(f"{len(lines)} files could not be read (their runs are not listed); first: ", style="red")
            text.append(lines[0])
            notice.update(text)
        self._update_titles()

    # -- the table ---------------------------------------------------------------------------
    def refresh_table(self, changed: set[str] | None = None) -> None:
        """Show ``self.rows`` in the table. With ``changed`` (runs whose values moved, not their
        status or membership), the order is kept and only those rows and their group headers
        are redrawn, unless the table is filtered or sorted by a column that moves live."""
        table = self.table
        if (changed is None or self._arranged is None or self.filter_text
                or table.sort_column in LIVE_COLUMNS):
            self._arranged = arrange(self.rows.values(), self.filter_text, table.sort_column,
                                     table.sort_reverse, self.collapsed)
            table.show_rows(self._arranged)
        else:
            groups = {self.rows[rid].group for rid in changed if rid in self.rows and self.rows[rid].group}
            patched: list[RunRow | GroupRow] = []
            updates: dict[str, dict] = {}
            for item in self._arranged:
                if isinstance(item, GroupRow):
                    if item.name in groups:
                        item = GroupRow(item.name, [self.rows.get(m.run_id, m) for m in item.members], item.collapsed)
                        updates[item.key] = item.cells()
                elif item.run_id in changed and item.run_id in self.rows:
                    item = self.rows[item.run_id]
                    updates[item.key] = item.cells
                patched.append(item)
            self._arranged = patched
            table.update_rows(updates)
        self._update_titles()

    def shown_run_ids(self) -> list[str]:
        """The runs the filter lets through (members of collapsed groups included)."""
        out: list[str] = []
        for item in self._arranged or []:
            if isinstance(item, GroupRow):
                if item.collapsed:
                    out.extend(m.run_id for m in item.members)
            else:
                out.append(item.run_id)
        return out

    def _update_titles(self) -> None:
        total = len(self.records)
        shown = self.shown_run_ids() if self.filter_text else list(self.records)
        # The counts describe what the table lists: with a filter, the runs it lets through.
        counts: dict[str, int] = {}
        for rid in shown:
            status = shown_status(self.records.get(rid, {}))
            counts[status] = counts.get(status, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        if self.filter_text:
            summary = f"{summary or 'no runs match'} (filtered)"
        elif not summary:
            summary = "no runs listed: see the message above" if self.damage else "no runs yet: press n to start one"
        set_titles(self.table, f"runs {len(shown)}/{total}" + (f"  filter: {self.filter_text}" if self.filter_text else ""),
                   summary)

    # -- selection ---------------------------------------------------------------------------
    @on(DataTable.RowHighlighted, "#runs")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.selection_changed()

    def selection_changed(self, force: bool = False) -> None:
        key = self.table.current_key
        run_id = None
        if key and is_group_key(key):
            members = self.group_members(key)
            run_id = members[0] if members else None
        elif key:
            run_id = key
        if run_id == self.selected and not force:
            return
        self.selected = run_id
        self.post_message(self.Selected(run_id))

    def group_members(self, key: str) -> list[str]:
        group = key[len(GROUP_PREFIX):]
        return [rid for rid, r in self.records.items() if r.get("group") == group]

    def selected_run_ids(self) -> list[str]:
        """Marked runs if any, else the run (or the group's runs) under the cursor."""
        if self.marked:
            return [rid for rid in self.records if rid in self.marked]
        return self.cursor_run_ids()

    def cursor_run_ids(self) -> list[str]:
        """The run (or the group's runs) under the cursor, whatever is marked."""
        key = self.table.current_key
        if key and is_group_key(key):
            return self.group_members(key)
        return [key] if key else []

    def current_run(self) -> dict | None:
        key = self.table.current_key
        if key and not is_group_key(key):
            return self.records.get(key)
        if self.selected:
            return self.records.get(self.selected)
        return None

    # -- marks, groups -----------------------------------------------------------------------
    def toggle_mark(self) -> None:
        key = self.table.current_key
        if not key:
            return
        if is_group_key(key):
            members = set(self.group_members(key))
            if members <= self.marked:
                self.marked -= members
            else:
                self.marked |= members
            changed = members
        else:
            self.marked ^= {key}
            changed = {key}
        now = self._now()
        for rid in changed:
            self.rows[rid] = run_row(self.records[rid], self._peek(rid), rid in self.marked, now)
        self.refresh_table(changed)
        if self.table.cursor_row < self.table.row_count - 1:
            self.table.move_cursor(row=self.table.cursor_row + 1)

    def toggle_group(self) -> bool:
        """Enter on a group header folds it; False if the cursor is on a run."""
        key = self.table.current_key
        if not (key and is_group_key(key)):
            return False
        self.collapsed ^= {key[len(GROUP_PREFIX):]}
        self.refresh_table()
        return True

    @on(RunsTable.SortChanged)
    def _sort_changed(self, event: RunsTable.SortChanged) -> None:
        self.refresh_table()

    # -- filter ------------------------------------------------------------------------------
    def open_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self.refresh_table()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        self.table.focus()
        if not event.value.strip():
            event.input.display = False

    def clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = False
        self.filter_text = ""
        self.refresh_table()
        self.table.focus()
