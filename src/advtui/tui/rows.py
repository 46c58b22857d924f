"""The runs table's model: one row per run (plus collapsible seed-group headers), its cells,
sort keys and the filter language. Pure functions of registry records and live streams, so the
widget only diffs cells and the logic is testable without a terminal."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from rich.text import Text

from advtui.core.epochs import epoch_accuracy
from advtui.core.format import fmt_duration, short_device, status_style
from advtui.core.health import ERROR, WARNING, record_findings, worst_level
from advtui.core.records import RunRecord
from advtui.tui.live import RunStream
from advtui.tui.sweep_view import sweep_cells


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int | None = None
    numeric: bool = False


COLUMNS: tuple[Column, ...] = (
    Column("mark", " ", 1),
    Column("id", "id", 6),
    Column("name", "name", None),
    Column("defense", "defense", None),
    Column("data", "data/model", None),
    Column("status", "status", 9),
    Column("health", "!", 1),
    Column("progress", "progress", 16, numeric=True),
    Column("loss", "loss", 6, numeric=True),
    Column("clean", "clean%", 6, numeric=True),
    Column("robust", "robust%", 7, numeric=True),
    Column("device", "device", None),
    Column("elapsed", "elapsed", 7, numeric=True),
    Column("eta", "ETA", 6, numeric=True),
)
# A narrow terminal (80 columns) shows what a run is and how it is doing; the defense, device
# and times are in its detail screen (d). Name and progress get fixed widths so the row fits.
NARROW_WIDTHS = {"mark": 1, "id": 6, "name": 17, "status": 9, "health": 1, "progress": 12, "clean": 6, "robust": 7}
NARROW_COLUMNS: tuple[Column, ...] = tuple(
    Column(c.key, c.label, NARROW_WIDTHS[c.key], c.numeric) for c in COLUMNS if c.key in NARROW_WIDTHS)
COLUMN_KEYS = tuple(c.key for c in COLUMNS)
SORTABLE = tuple(c.key for c in COLUMNS if c.key != "mark")

GROUP_PREFIX = "group:"
BAR_WIDTH = 8
_EIGHTHS = " ▏▎▍▌▋▊▉"
_NO_METRICS: dict = {}


def progress_bar(fraction: float | None, width: int = BAR_WIDTH) -> str:
    """A bar drawn with eighth blocks, so a slow run still moves visibly."""
    if fraction is None:
        return " " * width
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    bar = "█" * full + (_EIGHTHS[part] if part and full < width else "")
    return bar.ljust(width)


# How the queue words the end of a run stopped while it waited (jobs.queue cancel_job and kill,
# through store.lifecycle.mark_killed): the store keeps it "killed", so that ``resume`` queues
# it again, but it never trained, and the dashboard calls it what it was.
NOT_STARTED = "before it started"


def shown_status(record: RunRecord | dict) -> str:
    """The status the dashboard shows: the record's, except "cancelled" for a run that was
    cancelled (or killed) while still queued. Takes a run's record as listed, or typed."""
    if isinstance(record, RunRecord):
        status, error = record.status, record.error
    else:
        status, error = record.get("status"), record.get("error")
    if status == "killed" and NOT_STARTED in str(error or ""):
        return "cancelled"
    return status or "-"


def health_marker(level: str | None) -> Text | str:
    """``!`` on a run with health findings (red for an error, yellow for warnings)."""
    if level is None:
        return " "
    return Text("!", style="bold red" if level == ERROR else "bold yellow")


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


class RunRow:
    """What the table shows for one run; ``sort`` holds comparable raw values per column.

    Built lazily when made by ``run_row``: the values on first use of ``sort`` or
    ``search_text``, the rich cells on first use of ``cells``. A table of 10,000 runs in its
    default order (by ``created``, grouped) then builds only the rows it shows."""

    __slots__ = ("run_id", "group", "created", "_cells", "_sort", "_search", "_build")

    def __init__(self, run_id: str, group: str | None, cells: dict[str, Any] | Callable[[], dict[str, Any]] | None,
                 sort: dict[str, Any] | None, search_text: dict[str, str] | None, created: Any = None,
                 build: Callable[[], tuple] | None = None):
        self.run_id, self.group, self._cells, self._sort, self._search = run_id, group, cells, sort, search_text
        self.created = created if created is not None else (sort or {}).get("created", 0)
        self._build = build

    def _built(self) -> None:
        build, self._build = self._build, None
        self._cells, self._sort, self._search = build()

    @property
    def sort(self) -> dict[str, Any]:
        if self._build is not None:
            self._built()
        return self._sort  # type: ignore[return-value]

    @property
    def search_text(self) -> dict[str, str]:
        if self._build is not None:
            self._built()
        return self._search  # type: ignore[return-value]

    @property
    def cells(self) -> dict[str, Any]:
        if self._build is not None:
            self._built()
        cells = self._cells
        if callable(cells):
            cells = self._cells = cells()
        return cells  # type: ignore[return-value]

    @property
    def key(self) -> str:
        return self.run_id

    def __repr__(self) -> str:
        return f"RunRow({self.run_id!r}, group={self.group!r})"


def run_row(record: dict, stream: RunStream | None, marked: bool, now: float | None = None) -> RunRow:
    """The row of a run's listed ``record`` (its values are worked out when first used: only
    then is the record read as a ``RunRecord``: a table of 10,000 runs in its default order converts
    only the rows it shows)."""
    now = now if now is not None else time.time()
    return RunRow(record["id"], record.get("group"), None, None, None, created=record.get("created", 0),
                  build=lambda: _row_parts(record, stream, marked, now))


def _row_parts(record: dict, stream: RunStream | None, marked: bool, now: float) -> tuple:
    run = RunRecord.from_dict(record)
    status = shown_status(run)
    metrics = run.metrics or _NO_METRICS
    epochs = run.configured_epochs
    epoch = run.epoch or 0
    loss = metrics.get("train_loss")
    fraction = (epoch / epochs) if epochs else None
    eta = None
    live = stream is not None and stream.events_read > 0
    if live:
        metrics = dict(metrics)
        latest = stream.latest_epoch()
        if latest and latest.get("epoch", 0) >= metrics.get("epoch", 0):
            metrics.update({k: v for k, v in latest.items() if k not in ("kind", "time")})
            epoch = max(epoch, latest["epoch"])
        if status in ("running", "queued"):
            step_loss = stream.outer_loss.last()
            loss = step_loss if step_loss is not None else loss
            fraction = stream.progress(epochs)
            eta = stream.eta_seconds(epochs, now)
    if status == "finished":
        fraction = 1.0 if fraction is None else fraction
    started, ended = run.started, run.ended
    # ``started`` is the latest (re)start: a resumed run adds the time it trained before.
    earlier = stream.earlier_time if live else 0.0
    if status == "running" and started:
        elapsed = now - started + earlier
    elif run.train_time is not None:
        elapsed = run.train_time
    elif started and ended:
        elapsed = ended - started + earlier
    else:
        elapsed = None
    done_epochs = min(epoch, epochs) if epochs else epoch
    data_model = f"{run.dataset or '-'}/{run.model or '-'}"
    accuracy = epoch_accuracy(metrics)  # validation, or test numbers for monitoring only
    clean, robust = accuracy.clean, accuracy.robust
    # The record's findings, updated at each epoch end by the training process: the table has
    # the record of every run, but not every run's whole stream.
    findings = record_findings(record) if run.health else []
    level = worst_level(findings)
    run_id = run.id
    name = run.name or "-"
    defense = run.defense or "-"
    device = short_device(run.device)

    def cells() -> dict[str, Any]:
        progress_text = Text(progress_bar(fraction), style=status_style(status))
        progress_text.append(f" {done_epochs}/{epochs or '?'}")
        return {
            "mark": Text("●", style="bold magenta") if marked else " ",
            "id": run_id,
            "name": name,
            "defense": defense,
            "data": data_model,
            "status": Text(status, style=status_style(status)),
            "health": health_marker(level),
            "progress": progress_text,
            "loss": Text(_num(loss, ".3f"), justify="right"),
            "clean": Text(_num(clean, ".1f"), justify="right"),
            "robust": Text(_num(robust, ".1f"), justify="right"),
            "device": device,
            "elapsed": Text(fmt_duration(elapsed), justify="right"),
            "eta": Text(fmt_duration(eta) if eta is not None else "-", justify="right"),
        }

    sort = {
        "mark": marked, "id": run_id, "name": name, "defense": defense,
        "data": data_model, "status": status, "health": len(findings), "progress": fraction, "loss": loss,
        "clean": clean, "robust": robust, "device": device, "elapsed": elapsed, "eta": eta,
        "created": run.created or 0, "health_level": level,
    }
    search = {
        "id": run_id, "name": name, "defense": defense, "data": data_model,
        "dataset": run.dataset or "", "model": run.model or "",
        "status": status, "device": device, "group": run.group or "",
        "health": " ".join(f"{f.code} {f.level}" for f in findings),  # health:stuck, health:error
    }
    return cells, sort, search


def matches(row: RunRow, query: str) -> bool:
    """Filter language: space-separated terms, all must match. ``field:value`` matches one field
    by substring (``status:running``, ``defense:rnn``); a bare word matches any field."""
    for term in query.lower().split():
        key, sep, value = term.partition(":")
        if sep and key in row.search_text:
            if value not in row.search_text[key].lower():
                return False
        elif not any(term in text.lower() for text in row.search_text.values()):
            return False
    return True


def _sort_key(column: str) -> Callable[[RunRow], tuple]:
    def key(row: RunRow) -> tuple:
        value = row.sort.get(column)
        # Missing values sort last in either direction is not possible with one key, so they
        # sort as smallest; ties keep creation order.
        return (value is not None, value if value is not None else 0, row.created)
    return key


@dataclass
class GroupRow:
    name: str
    members: list[RunRow]
    collapsed: bool

    @property
    def key(self) -> str:
        return GROUP_PREFIX + self.name

    def health_level(self) -> str | None:
        """The worst health level among the members: a collapsed group still shows its marker."""
        levels = {m.sort.get("health_level") for m in self.members}
        return ERROR if ERROR in levels else (WARNING if WARNING in levels else None)

    def cells(self) -> dict[str, Any]:
        statuses: dict[str, int] = {}
        for m in self.members:
            s = m.sort["status"]
            statuses[s] = statuses.get(s, 0) + 1
        status = Text()
        for i, (s, n) in enumerate(sorted(statuses.items())):
            status.append(("" if i == 0 else " ") + f"{n}{s[0]}", style=status_style(s))
        fractions = [m.sort["progress"] for m in self.members if m.sort["progress"] is not None]
        cleans = [m.sort["clean"] for m in self.members if m.sort["clean"] is not None]
        robusts = [m.sort["robust"] for m in self.members if m.sort["robust"] is not None]
        arrow = "▸" if self.collapsed else "▾"
        defenses = sorted({m.sort["defense"] for m in self.members})
        progress = Text(progress_bar(sum(fractions) / len(fractions) if fractions else None), style="dim")
        progress.append(f" {len(self.members)} runs")
        # The paper reports the lowest robust accuracy over seeds: show that, and the mean clean.
        cells = {
            "mark": " ", "id": Text(arrow, style="bold"),
            "name": Text(f"{self.name}", style="bold"), "defense": ",".join(defenses),
            "data": self.members[0].sort["data"], "status": status,
            "health": health_marker(self.health_level()),
            "progress": progress,
            "loss": "", "clean": Text(_num(sum(cleans) / len(cleans) if cleans else None, ".1f"), justify="right", style="dim"),
            "robust": Text(_num(min(robusts) if robusts else None, ".1f"), justify="right", style="bold"),
            "device": "", "elapsed": "", "eta": "",
        }
        cells.update(sweep_cells(self.name, self.members) or {})  # a sweep's progress and best so far
        return cells


def _created(row: RunRow) -> Any:
    return row.created


def arrange(rows: Iterable[RunRow], query: str, sort_column: str | None, reverse: bool,
            collapsed: set[str]) -> list[RunRow | GroupRow]:
    """Filter, sort and group: a group header sits where its first member would, its members
    follow it unless it is collapsed. Runs without a group (or alone in one) are plain rows."""
    visible = [r for r in rows if not query or matches(r, query)]
    if sort_column:
        visible.sort(key=_sort_key(sort_column), reverse=reverse)
    else:
        visible.sort(key=_created)
    members: dict[str, list[RunRow]] = {}
    for r in visible:
        if r.group:
            members.setdefault(r.group, []).append(r)
    out: list[RunRow | GroupRow] = []
    emitted: set[str] = set()
    for r in visible:
        group = r.group if r.group and len(members.get(r.group, [])) > 1 else None
        if group is None:
            out.append(r)
        elif group not in emitted:
            emitted.add(group)
            header = GroupRow(group, members[group], group in collapsed)
            out.append(header)
            if not header.collapsed:
                out.extend(members[group])
    return out
