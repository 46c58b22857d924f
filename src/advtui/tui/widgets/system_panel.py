"""The GPU panel (or CPU and memory where there is no NVIDIA GPU) and the queue panel.

Both render rich Text from the samples ``Services`` takes in a worker (NVML through
``advtui.jobs.monitor.GpuSampler``, jobs through ``advtui.jobs.queue``); they never sample
anything themselves."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from advtui.core.format import NA, error_summary, format_bytes, status_style
from advtui.core.records import JobRecord, RunRecord
from advtui.tui.widgets.bars import hbar, level_style, sparkline

LABEL = 5  # width of the row labels ("util", "mem", ...)


def _fraction(value, total=100.0) -> float | None:
    if isinstance(value, (int, float)) and isinstance(total, (int, float)) and total:
        return float(value) / float(total)
    return None


def _pct(value) -> str:
    return f"{value:3.0f}%" if isinstance(value, (int, float)) else " n/a"


def show_if_changed(panel: Static, text: Text) -> None:
    """Redraw a fixed-size panel only when what it shows changed (and without a layout pass:
    its size never depends on its content)."""
    key = text_key(text)
    if key != getattr(panel, "_shown", None):
        panel._shown = key  # type: ignore[attr-defined]
        panel.update(text, layout=False)


def set_titles(widget, title: str, subtitle: str | None = None) -> None:
    """Border titles, set only when they change (each set repaints the widget)."""
    if str(widget.border_title or "") != title:
        widget.border_title = title
    if subtitle is not None and str(widget.border_subtitle or "") != subtitle:
        widget.border_subtitle = subtitle


def text_key(text: Text) -> tuple:
    """What a Text shows: its characters and styles (Text's == compares the characters only)."""
    return text.plain, tuple(text.spans), str(text.style)


def _memory(used, total) -> str:
    """'3.8/23.5G': used and total in GiB, short enough for the panel."""
    if isinstance(used, (int, float)) and isinstance(total, (int, float)):
        return f"{used / 2**30:.1f}/{total / 2**30:.1f}G"
    return "n/a"


def _bar_row(label: str, fraction: float | None, right: str, width: int) -> Text:
    text = Text(f"{label:<{LABEL}}", style="bold")
    text.append_text(hbar(fraction, width, level_style(fraction)))
    text.append(f" {right}")
    return text


class SystemPanel(Static):
    """Per GPU: utilization with its history, memory, temperature, power and the runs on it;
    ``compact`` (a narrow terminal's short panel): one line per GPU."""

    compact = False

    def on_mount(self) -> None:
        self.border_title = "GPUs"
        self.update(Text("sampling…", style="dim"))

    def show_error(self, message: str) -> None:
        """Sampling failed: say why instead of "sampling…" or a stale sample."""
        set_titles(self, "GPUs · sampling failed")
        show_if_changed(self, Text(message, style="red"))

    def show(self, sample, records: dict[str, dict]) -> None:
        if sample is None:
            return
        width = max(8, self.content_size.width - LABEL - 15) if self.content_size.width else 24
        snapshot = sample.gpus
        lines: list[Text] = []
        if self.compact:
            lines = self._compact_lines(sample, records)
        elif snapshot.gpus:
            set_titles(self, f"GPUs · {snapshot.message}")
            for gpu in snapshot.gpus:
                lines.append(Text(f"{gpu.index} {gpu.name}"[: width + LABEL + 12], style="bold cyan"))
                lines.append(_bar_row("util", _fraction(gpu.utilization), _pct(gpu.utilization), width))
                lines.append(Text(" " * LABEL).append_text(
                    sparkline(sample.gpu_history.get(gpu.index, []), width, top=100.0)))
                mem = _fraction(gpu.memory_used, gpu.memory_total)
                lines.append(_bar_row("mem", mem, _memory(gpu.memory_used, gpu.memory_total), width))
                temp = f"{gpu.temperature:.0f}°C" if isinstance(gpu.temperature, (int, float)) else "n/a °C"
                power = (f"{gpu.power:.0f}/{gpu.power_limit:.0f} W"
                         if isinstance(gpu.power, (int, float)) and isinstance(gpu.power_limit, (int, float))
                         else f"{gpu.power if gpu.power != NA else 'n/a'} W")
                lines.append(_bar_row("pwr", _fraction(gpu.power, gpu.power_limit), f"{power} {temp}", width))
                runs = [p for p in gpu.processes if p.run_id]
                others = len(gpu.processes) - len(runs)
                on = Text(f"{'runs':<{LABEL}}", style="bold")
                if runs:
                    for i, p in enumerate(runs):
                        name = run_name(records, p.run_id)
                        on.append(("" if i == 0 else ", ") + f"{p.run_id}", style="magenta")
                        on.append(f" {name}" + (" (eval)" if p.kind == "eval" else ""), style="dim")
                else:
                    on.append("none", style="dim")
                if others:
                    on.append(f" +{others} other process{'es' if others > 1 else ''}", style="dim")
                lines.append(on)
        else:
            set_titles(self, "system · no NVIDIA GPU")
            lines.append(Text(snapshot.message.split(":")[0] if snapshot.message.startswith("no NVIDIA GPU")
                              else snapshot.message, style="yellow"))
            lines.append(Text("runs train on the CPU slots", style="dim"))
            lines.append(_bar_row("cpu", sample.cpu_percent / 100.0, f"{sample.cpu_percent:3.0f}% of {sample.cpu_count}", width))
            lines.append(Text(" " * LABEL).append_text(sparkline(sample.cpu_history, width, top=100.0)))
            lines.append(_bar_row("mem", _fraction(sample.memory_used, sample.memory_total),
                                  _memory(sample.memory_used, sample.memory_total),
                                  width))
        if sample.runs and not self.compact:
            lines.append(Text("running runs: cpu, memory", style="bold"))
            for run_id, stats in sorted(sample.runs.items()):
                name = run_name(records, run_id)
                row = Text(f"{run_id} ", style="magenta")
                row.append(f"{stats.cpu_percent:4.0f}% {format_bytes(stats.memory_rss):>9} ")
                row.append(name, style="dim")
                lines.append(row)
        show_if_changed(self, Text("\n").join(lines))


    def _compact_lines(self, sample, records: dict[str, dict]) -> list[Text]:
        """One line per GPU (utilization, memory, temperature, the runs on it), or the CPU and
        memory where there is none, then one line per running run."""
        width = max(6, (self.content_size.width or 38) - 28)
        snapshot = sample.gpus
        lines: list[Text] = []
        if snapshot.gpus:
            set_titles(self, f"GPUs · {snapshot.message}")
            for gpu in snapshot.gpus:
                line = Text(f"{gpu.index} ", style="bold cyan")
                util = _fraction(gpu.utilization)
                line.append_text(hbar(util, width, level_style(util)))
                temp = f" {gpu.temperature:.0f}°C" if isinstance(gpu.temperature, (int, float)) else ""
                line.append(f" {_pct(gpu.utilization)} {_memory(gpu.memory_used, gpu.memory_total)}{temp}")
                runs = [p.run_id for p in gpu.processes if p.run_id]
                if runs:
                    line.append(" " + ",".join(runs), style="magenta")
                lines.append(line)
        else:
            set_titles(self, "system · no NVIDIA GPU")
            lines.append(_bar_row("cpu", sample.cpu_percent / 100.0, f"{sample.cpu_percent:3.0f}% of {sample.cpu_count}",
                                  width))
            lines.append(_bar_row("mem", _fraction(sample.memory_used, sample.memory_total),
                                  _memory(sample.memory_used, sample.memory_total), width))
        for run_id, stats in sorted(sample.runs.items()):
            row = Text(f"{run_id} ", style="magenta")
            row.append(f"cpu {stats.cpu_percent:3.0f}% mem {format_bytes(stats.memory_rss)} ")
            row.append(run_name(records, run_id), style="dim")
            row.truncate(self.content_size.width or 38, overflow="ellipsis")
            lines.append(row)
        return lines


# Wide enough for the longest job status ("cancelled"), plus a space before the kind.
STATUS_WIDTH = 10


def run_name(records: dict[str, dict], run_id: str | None) -> str:
    """The name of run ``run_id`` among the listed ``records`` ("" if it has none or is not listed)."""
    record = records.get(run_id) if run_id else None
    return (RunRecord.from_dict(record).name or "") if record else ""


def job_status(job: JobRecord) -> str:
    """What the queue panel calls a job's end: a job stopped by a kill is "killed", not one of
    the cancelled (never started) or failed ones."""
    return "killed" if job.killed_by_user else job.status or "?"


class QueuePanel(Static):
    """Running and queued jobs, slots in use, and who is scheduling; ``compact`` (a narrow
    terminal's half-width panel): where the slots are moves from the title to the first line."""

    compact = False

    def on_mount(self) -> None:
        self.border_title = "queue"
        self.update(Text("reading the queue…", style="dim"))

    def show_error(self, message: str) -> None:
        """The queue could not be read (a damaged queue file): say why instead of a stale list."""
        set_titles(self, "queue · unreadable")
        show_if_changed(self, Text(message, style="red"))

    def show(self, state, records: dict[str, dict], scheduler_error: str | None = None) -> None:
        """The jobs; ``scheduler_error``: why the last scheduling step failed, on top."""
        if state is None:
            if scheduler_error:  # no listing yet, but the scheduler's failure is news
                set_titles(self, "queue · scheduling failed")
                show_if_changed(self, Text(scheduler_error, style="red"))
            return
        if state.gpus is None:  # a scheduler on another host: its GPUs are not sampled here
            slots, where = f"{state.cpu_slots}+{state.slots_per_gpu}/GPU", "its host"
        else:
            slots = str(state.cpu_slots + state.gpus * state.slots_per_gpu)
            where = f"{state.gpus} GPU×{state.slots_per_gpu}" if state.gpus else ""
        # Slots, not cores: "1 CPU" read as one core beside jobs of 2 threads.
        counts = f"{state.running}/{slots} " + ("slots" if where else f"CPU slot{'s' if slots != '1' else ''}")
        if where and not self.compact:
            counts += f" ({where})"
        set_titles(self, f"queue · {counts} · {state.queued} waiting")
        lines: list[Text] = []
        if scheduler_error:
            lines.append(Text(scheduler_error, style="bold red"))
        # A slot is one job, not one core: each job gets this many math threads (the
        # "cpu (N threads)" its record shows).
        threads = (f"each job: {state.threads} thread{'s' if state.threads != 1 else ''}"
                   if state.threads is not None else "")
        if self.compact and where:
            lines.append(Text(f"{where}" + (f", {threads}" if threads else ""), style="dim"))
        elif threads:
            lines.append(Text(threads, style="dim"))
        if state.scheduler == "none":
            lines.append(Text("no scheduler holds the lock", style="yellow"))
        elif state.scheduler != "this dashboard":
            lines.append(Text(f"scheduled by {state.scheduler}", style="dim"))
        if not state.jobs:
            lines.append(Text("no jobs: n queues a run, e an evaluation", style="dim"))
        for job in map(JobRecord.from_dict, state.jobs):
            status = job_status(job)
            row = Text(f"{job.id} ", style="bold" if status in ("running", "queued") else "dim")
            row.append(f"{status:<{STATUS_WIDTH}}", style=status_style(status))
            row.append(f"{job.kind or '?':<5} {job.run_id or '?'} ")
            detail = run_name(records, job.run_id)
            if job.kind == "eval":
                detail = ",".join(job.attacks or ["default attacks"])
            if status == "queued" and job.depends_on:
                detail = f"after {','.join(job.depends_on)} " + detail
            if status in ("failed", "cancelled") and job.error:
                detail = error_summary(job.error)
            row.append(detail, style="dim")
            row.truncate(max(20, self.content_size.width or 44), overflow="ellipsis")
            lines.append(row)
        show_if_changed(self, Text("\n").join(lines))
