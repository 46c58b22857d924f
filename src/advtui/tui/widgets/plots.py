"""Terminal plots of one run (textual-plotext): the inner-loss curve, losses over training and
accuracy per epoch. Each plot redraws only when its run's stream has new data (or the run
changes), and long series are min/max downsampled to about two points per column."""

from __future__ import annotations

from typing import Iterable, Sequence

from textual_plotext import PlotextPlot

from advtui.core.epochs import epoch_accuracy
from advtui.tui.live import RunStream, minmax_downsample

# Colours (RGB): the maximizer's curves in cyan, PGD's on the same batch in orange, so an rnn
# run's two trajectories are told apart at a glance; older trajectories fade toward the
# background.
CYAN, ORANGE, GREEN, MAGENTA, YELLOW = (0, 200, 255), (255, 160, 0), (80, 220, 100), (230, 90, 230), (240, 220, 80)
FADED = (70, 80, 90)

# A qualitative palette for overlaying several runs (compare screen).
PALETTE = [(0, 200, 255), (255, 160, 0), (80, 220, 100), (230, 90, 230), (240, 220, 80),
           (255, 90, 90), (150, 150, 255), (200, 200, 200)]


def fade(color: tuple[int, int, int], amount: float) -> tuple[int, int, int]:
    """Blend ``color`` toward a dim grey: 0 keeps it, 1 is fully faded."""
    return tuple(round(c + (f - c) * amount) for c, f in zip(color, FADED))  # type: ignore[return-value]


class RunPlot(PlotextPlot):
    """Base: remembers which (run, version, size) it drew so it redraws only when needed."""

    DEFAULT_CSS = """
    RunPlot { height: 1fr; width: 1fr; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._drawn: tuple | None = None

    def show(self, run_id: str | None, stream: RunStream | None, title_hint: str = "") -> None:
        token = (run_id, stream.version if stream else -1, title_hint)
        if token == self._drawn:
            return
        self._drawn = token
        plt = self.plt
        plt.clear_figure()
        plt.clear_data()
        self.draw(stream, title_hint)
        self.refresh()

    def _points(self) -> int:
        # Braille markers give two points per column; keep a little headroom.
        return max(32, 2 * (self.size.width or 60))

    def draw(self, stream: RunStream | None, title_hint: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class InnerLossPlot(RunPlot):
    """Loss at each inner step t = 0..T for the latest logged batches (newest brightest); for
    learned maximizers PGD's trajectory on the same batch is drawn beside it."""

    def draw(self, stream: RunStream | None, title_hint: str) -> None:
        plt = self.plt
        recent = list(stream.recent_inner) if stream else []
        if not recent:
            # A run without inner maximization (plain) never has any: the hint says so (short:
            # plotext drops a title wider than the plot).
            plt.title(f"inner loss · {title_hint}" if title_hint else "inner loss vs step t · no inner trajectories yet")
            return
        latest = recent[-1]
        maximizer = latest.get("maximizer") or "inner"
        n = len(recent)
        for i, event in enumerate(recent):
            age = (n - 1 - i) / max(n - 1, 1)
            is_latest = i == n - 1
            losses = event.get("losses") or []
            steps = list(range(len(losses)))
            pgd = event.get("pgd")
            if pgd:
                plt.plot(list(range(len(pgd))), _clean(pgd), color=fade(ORANGE, 0.8 * age),
                         marker="braille", label="pgd (same batch)" if is_latest else None)
            plt.plot(steps, _clean(losses), color=fade(CYAN, 0.8 * age), marker="braille",
                     label=f"{maximizer} (latest)" if is_latest else None)
        plt.title(f"inner loss vs t · last {n} batches · e{latest.get('epoch', 0) + 1} b{latest.get('batch', 0)}")
        plt.xlabel("inner step t")
        plt.xticks(list(range(len(latest.get("losses") or []))))


class TrainingLossPlot(RunPlot):
    """Outer loss and the inner loss at step T over training (global step on x)."""

    def draw(self, stream: RunStream | None, title_hint: str) -> None:
        plt = self.plt
        if not stream or (not len(stream.outer_loss) and not len(stream.inner_final)):
            plt.title("loss over training · no steps logged yet")
            return
        points = self._points()
        for series, color, label in ((stream.outer_loss, GREEN, "outer loss"),
                                     (stream.inner_final, CYAN, "inner loss at T"),
                                     (stream.pgd_final, ORANGE, "pgd at T")):
            if len(series) == 1:  # a line needs two points: show the first one as a dot
                plt.scatter(series.xs[:1], series.ys[:1], color=color, marker="dot", label=label)
            elif len(series):
                xs, ys = series.downsampled(points)
                plt.plot(xs, ys, color=color, marker="braille", label=label)
        plt.title("loss over training")
        plt.xlabel("step")


class AccuracyPlot(RunPlot):
    """Clean and robust accuracy per epoch, on the validation split (or the test split, for
    monitoring only, with --val-size 0)."""

    def draw(self, stream: RunStream | None, title_hint: str) -> None:
        plt = self.plt
        epochs = sorted(stream.epochs.items()) if stream else []
        if not epochs:
            plt.title("accuracy per epoch · no epoch finished yet")
            return
        xs = [e for e, _ in epochs]
        accuracies = [epoch_accuracy(m) for _, m in epochs]
        for key, color, label in (("clean", GREEN, "clean"), ("robust", MAGENTA, "robust (pgd)")):
            ys = [getattr(a, key) for a in accuracies]
            pts = [(x, y) for x, y in zip(xs, ys) if isinstance(y, (int, float))]
            if not pts:
                continue
            px, py = zip(*pts)
            if len(pts) == 1:
                plt.scatter(list(px), list(py), color=color, marker="dot", label=label)
            else:
                plt.plot(list(px), list(py), color=color, marker="braille", label=label)
        last = accuracies[-1]
        # The split in one word (the detail screen says that test numbers are for monitoring only).
        plt.title(f"{last.split} accuracy % per epoch · clean {_fmt(last.clean)} robust {_fmt(last.robust)}")
        plt.xlabel("epoch")
        plt.xticks(xs if len(xs) <= 12 else None)
        plt.ylim(0, 100)


class OverlayPlot(PlotextPlot):
    """Several runs' curves in one plot with a legend (compare screen)."""

    DEFAULT_CSS = """
    OverlayPlot { height: 1fr; width: 1fr; }
    """

    def show_series(self, title: str, xlabel: str,
                    curves: Iterable[tuple[str, Sequence[float], Sequence[float]]]) -> None:
        plt = self.plt
        plt.clear_figure()
        plt.clear_data()
        any_curve = False
        for i, (label, xs, ys) in enumerate(curves):
            if not xs:
                continue
            any_curve = True
            xs, ys = minmax_downsample(list(xs), _clean(ys), 200)
            color = PALETTE[i % len(PALETTE)]
            if len(xs) == 1:
                plt.scatter(xs, ys, color=color, marker="dot", label=label)
            else:
                plt.plot(xs, ys, color=color, marker="braille", label=label)
        plt.title(title if any_curve else f"{title} · no data")
        plt.xlabel(xlabel)
        self.refresh()


def _clean(values: Sequence) -> list[float]:
    # NaN is stored as null in the events file; plotext needs numbers, so draw it as a gap-free
    # repeat of the previous value (a blow-up is still visible in the neighbours).
    out: list[float] = []
    for v in values:
        out.append(float(v) if isinstance(v, (int, float)) else (out[-1] if out else 0.0))
    return out


def _fmt(value) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "-"
