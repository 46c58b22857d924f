"""``d``: everything about one run: record, config, checkpoints, per-epoch metrics, evaluation
results with their sanity flags, and its jobs. Refreshes while the run or its evals progress."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from advtui.core.config import values_in_force
from advtui.core.checkpoints import describe as describe_checkpoint
from advtui.core.checkpoints import kept_epoch, kind_from_path
from advtui.core.defenses import uses_option
from advtui.core.epochs import MONITOR_NOTE, epoch_accuracy, has_epoch_accuracy
from advtui.core.format import error_summary, fmt_duration, format_bytes, status_style
from advtui.core.health import ERROR, Finding, record_findings
from advtui.jobs.queue import jobs_of_run
from advtui.tui.failures import one_line
from advtui.tui.live import RunStream
from advtui.tui.rows import shown_status

CONFIG_KEYS = ("eps", "inner_steps", "step_size", "batch_size", "lr", "momentum", "weight_decay", "milestones",
               "beta", "seed", "init", "train_limit", "test_limit", "val_size", "eval_limit", "early_stop", "preset",
               "device",
               "rnn_hidden", "rnn_grad_input", "rnn_delta_scale", "rnn_lr", "compare_every", "log_every")


def config_keys(record: dict) -> list[str]:
    """The options that apply to the record's defense: those every run has, and those its
    objective and maximizer read (``core.defenses``: the learned RNN optimizer's only for
    rnn-adv and rnn-trades, TRADES' beta only for the TRADES objective)."""
    defense = record.get("defense")
    return [key for key in CONFIG_KEYS if uses_option(defense, key)]


def fmt_when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "-"


def _n(value: Any, fmt: str = ".2f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


def _config_value(value: Any) -> str:
    """A config value as ``advtui show`` prints it: a float to 6 significant digits (eps/4 of
    8/255 is 0.00784314, not 0.00784313725490196)."""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _section(title: str) -> Text:
    return Text(f"\n{title}", style="bold underline")


def _health_lines(findings: list[Finding]) -> list[Text]:
    if not findings:
        return [Text("no warnings", style="green")]
    lines = []
    for f in findings:
        if not f.active:
            lines.append(Text(f"cleared at epoch {f.cleared}: {f.message}", style="dim"))
            continue
        line = Text(f"{f.level:<8}", style="bold red" if f.level == ERROR else "bold yellow")
        lines.append(line.append(f" {f.message}", style=""))
    return lines


class DetailScreen(Screen):
    BINDINGS = [
        Binding("escape,q,d", "app.pop_screen", "Back"),
        Binding("l", "log", "Log"),
    ]

    def __init__(self, run_id: str, interval: float = 2.0) -> None:
        super().__init__()
        self.run_id = run_id
        self.interval = interval
        self.results: dict[str, dict] | None = None
        self.results_error: str | None = None
        self.jobs: list[dict] = []
        self.results_loaded = False

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="detail"):
            yield Static(id="detail-run")
            yield Static(id="detail-epochs")
            yield Static(id="detail-results")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"run {self.run_id}"
        self.refresh_data()
        self.set_interval(self.interval, self.refresh_data)

    def action_log(self) -> None:
        from advtui.tui.screens.log import LogScreen

        self.app.push_screen(LogScreen(self.run_id))

    def refresh_data(self) -> None:
        self.run_worker(self._load, thread=True, group="detail", exclusive=True, exit_on_error=False)

    def _load(self) -> None:
        try:
            self._load_parts()
        except Exception as exc:  # noqa: BLE001 - a damaged record or file: say so, try again next tick
            self.app.call_from_thread(self._show_error, f"cannot read run {self.run_id}: {one_line(exc)} "
                                                        f"(tried again every {self.interval:g}s)")

    def _show_error(self, message: str) -> None:
        self.query_one("#detail-run", Static).update(Text(message, style="red"))
        self.results_loaded = True

    def _load_parts(self) -> None:
        app = self.app
        record = app.registry.get_run(self.run_id)  # type: ignore[attr-defined]
        stream = app.streams.get(self.run_id)  # type: ignore[attr-defined]
        stream.poll()
        try:
            results, error = app.services.results(self.run_id), None  # type: ignore[attr-defined]
        except Exception as exc:  # a results table another version wrote: show why, keep the rest
            results, error = {}, f"{type(exc).__name__}: {exc}"
        jobs = jobs_of_run(app.registry, self.run_id)  # type: ignore[attr-defined]
        app.call_from_thread(self._show, record, stream, results, error, jobs)

    def _show(self, record: dict | None, stream: RunStream, results: dict, error: str | None, jobs: list[dict]) -> None:
        self.results, self.results_error, self.jobs = results, error, jobs
        if record is None:
            self.query_one("#detail-run", Static).update(Text(f"run {self.run_id} is no longer in the registry", style="red"))
            return
        self.sub_title = f"{record.get('name', '')} · {shown_status(record)}"
        self.query_one("#detail-run", Static).update(self._run_part(record, self._findings(record, stream)))
        self.query_one("#detail-epochs", Static).update(self._epochs_part(stream))
        self.query_one("#detail-results", Static).update(self._results_part(results, error, jobs))
        self.results_loaded = True

    @staticmethod
    def _findings(record: dict, stream: RunStream) -> list[Finding]:
        """The checks replayed over the run's stream (cleared findings too), else the record's
        (a run with no stream yet)."""
        if stream.events_read:
            return list(stream.health.findings)  # a copy: the worker's next poll may append
        return record_findings(record)

    # -- parts --------------------------------------------------------------------------------
    def _run_part(self, r: dict, findings: list[Finding]) -> Group:
        status = shown_status(r)
        head = Text()
        head.append(f"{r['id']}  ", style="bold")
        head.append(f"{r.get('name', '-')}  ")
        head.append(status, style=status_style(status))
        if r.get("group"):
            head.append(f"  group {r['group']}", style="dim")
        info = Table.grid(padding=(0, 2))
        info.add_column(style="bold")
        info.add_column()
        info.add_column(style="bold")
        info.add_column()
        m = r.get("metrics") or {}
        info.add_row("defense", str(r.get("defense")), "data/model", f"{r.get('dataset')}/{r.get('model')}")
        info.add_row("epoch", f"{r.get('epoch', 0)}/{r.get('epochs', '?')}", "train time", fmt_duration(r.get("train_time")))
        info.add_row("device", str(r.get("device") or "-"), "host / pid", f"{r.get('host') or '-'} / {r.get('pid') or '-'}")
        info.add_row("created", fmt_when(r.get("created")), "started / ended",
                     f"{fmt_when(r.get('started'))} / {fmt_when(r.get('ended'))}")
        info.add_row("parameters", f"{r.get('model_params') or '-'}", "inner maximizer params", f"{r.get('maximizer_params', '-')}")
        a = epoch_accuracy(m)
        info.add_row(f"{a.split} clean %", _n(a.clean), f"{a.split} pgd-{(r.get('config') or {}).get('inner_steps', '?')} %",
                     f"{_n(a.robust)} (n={a.n if a.n is not None else '-'})"
                     + ("" if a.split == "val" else f", {MONITOR_NOTE}"))
        best = r.get("best_epoch")
        split = r.get("eval_split") or (a.split if has_epoch_accuracy(m) else None)  # None: not started
        best_text = f"{best} (best.pt)" if isinstance(best, int) else (
            "none: no validation split" if split == "test" else "-")
        info.add_row("best epoch", best_text, "", "")
        parts: list[Any] = [head, info]
        if r.get("error") and r.get("status") == "killed":
            # Stopped on purpose (a kill, a cancel): why it stopped, not an error.
            parts += [_section("stopped"), Text(str(r["error"]).strip()[-1500:], style="yellow")]
        elif r.get("error"):
            parts += [_section("error"), Text(str(r["error"]).strip()[-1500:], style="red")]
        parts += [_section("health"), *_health_lines(findings)]
        # The values the run trained with, as ``advtui show`` prints them (eps/4 for an unset step).
        cfg = values_in_force(r.get("config") or {})
        config = Table.grid(padding=(0, 2))
        for _ in range(4):
            config.add_column(style="bold")
            config.add_column()
        cells = [(k, _config_value(cfg.get(k))) for k in config_keys(r) if k in cfg]
        for i in range(0, len(cells), 4):
            row: list[str] = []
            for k, v in cells[i:i + 4]:
                row += [k, v]
            config.add_row(*row)
        parts += [_section("config"), config, _section("checkpoints")]
        checkpoints = r.get("checkpoints") or {}
        if not checkpoints:
            parts.append(Text("none yet (the first is written at the end of epoch 1)", style="dim"))
        folder = self.app.runs_root / r["id"]  # type: ignore[attr-defined]
        for label, rel in checkpoints.items():
            path = folder / rel
            try:
                st = os.stat(path)
                state = Text(f"{format_bytes(st.st_size)}, saved {fmt_when(st.st_mtime)}")
            except OSError:
                state = Text("missing", style="red")
            epoch = kept_epoch(r, label)
            held = f" (epoch {epoch})" if epoch is not None else ""
            parts.append(Text(f"{label:<6} {rel}{held}  ").append_text(state))
        return Group(*parts)

    def _epochs_part(self, stream: RunStream) -> Group:
        epochs = sorted(stream.epochs.items())
        if not epochs:
            return Group(_section("epochs"), Text("no epoch finished yet", style="dim"))
        table = Table(box=None, header_style="bold", pad_edge=False)
        for col in ("epoch", "train loss", "train acc %", "inner loss at T", "clean %", "robust %", "n", "time", "lr"):
            table.add_column(col, justify="right")
        for e, m in epochs[-12:]:
            a = epoch_accuracy(m)
            table.add_row(str(e), _n(m.get("train_loss"), ".4f"), _n(m.get("train_acc")), _n(m.get("inner_final_loss"), ".4f"),
                          _n(a.clean), _n(a.robust), str(a.n if a.n is not None else "-"),
                          fmt_duration(m.get("epoch_time")), _n(m.get("lr"), ".3g"))
        note = Text(f"(last 12 of {len(epochs)})", style="dim") if len(epochs) > 12 else Text("")
        return Group(_section("epochs"), table, note)

    def _results_part(self, results: dict, error: str | None, jobs: list[dict]) -> Group:
        parts: list[Any] = [_section("evaluation results")]
        if error:
            parts.append(Text(f"cannot read results: {error}", style="red"))
        if not results:
            parts.append(Text("no results yet: press e on the main screen to queue an evaluation", style="dim"))
        else:
            table = Table(box=None, header_style="bold", pad_edge=False)
            for col, justify in (("attack", "left"), ("accuracy %", "right"), ("n", "right"), ("kind", "left"),
                                 ("time", "right"), ("sanity flags", "left")):
                table.add_column(col, justify=justify)
            first = next(iter(results.values()))
            for spec, doc in results.items():
                summary = doc.get("kind") == "summary"
                flags = "; ".join(f.get("message", f.get("code", "")) for f in doc.get("flags") or [])
                kind = "summary" if summary else doc.get("accuracy_kind", "attack")
                if summary and spec == "min" and doc.get("argmin_label"):
                    kind = f"min: {doc['argmin_label']}"
                table.add_row(Text(doc.get("label") or spec, style="bold" if summary else ""),
                              _n(doc.get("accuracy")), str(doc.get("n", "-")), kind,
                              "" if summary else fmt_duration(doc.get("wall_time")),
                              Text(flags or ("" if summary else "ok"), style="red" if flags else "green"))
            settings = first.get("settings") or {}
            kind = first.get("checkpoint_kind") or kind_from_path(first.get("checkpoint"))
            parts.append(Text(f"checkpoint {describe_checkpoint(kind, first.get('checkpoint_epoch'))} "
                              f"{first.get('checkpoint', '-')} ({first.get('checkpoint_hash', '-')}), "
                              f"eps {settings.get('eps', '-')}, examples {settings.get('examples', '-')}", style="dim"))
            parts.append(table)
        if jobs:
            parts.append(_section("jobs"))
            table = Table(box=None, header_style="bold", pad_edge=False)
            for col in ("job", "kind", "status", "attacks / note"):
                table.add_column(col)
            for job in jobs[-8:]:
                status = job.get("status", "-")
                note = error_summary(job.get("error"))[:120] if job.get("error") else \
                    ",".join(job.get("attacks") or []) if job.get("kind") == "eval" else ""
                table.add_row(job["id"], job.get("kind", "-"), Text(status, style=status_style(status)), note)
            parts.append(table)
        return Group(*parts)
