"""Dashboard benchmarks, measured by driving the real app headless in a fresh process.

1. Time from launch (process start) to the first full paint with 1,000 runs in the registry,
   against a bare Textual app (one Static) launched the same way: the reference says how much
   of the figure is Python and Textual themselves.
2. CPU used by the dashboard while 4 runs stream metrics: synthetic writers (another process)
   append realistic events (a step event 4 times a second, an inner trajectory twice a second,
   an epoch every 30 s, like a fast GPU run logging every 10 batches) to 4 running runs'
   events.jsonl; the dashboard, with one of them selected so its plots redraw, its scheduler
   on and 1,000 other runs in the table, is measured with psutil over a window after warm-up.
   Reference: the same dashboard with nothing streaming.

    python bench/dashboard.py [--runs 1000] [--window 30] [--repeat 3] [--only paint|cpu] [--root DIR]

The first paint is also given in CPU seconds of the process (all threads): on a shared
machine the wall time counts other processes' turns too. ``--root`` keeps the built registry
in DIR (built there if empty) so launches can be compared across code versions.

Prints the figures; nothing is asserted (timing belongs here, not in tests).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve()
SIZE = (160, 48)
STREAMING = 4
STEP_HZ, INNER_HZ, EPOCH_EVERY_S = 4.0, 2.0, 30.0


# -- building a registry ------------------------------------------------------------------------------
def build_registry(root: Path, n_runs: int, running_pids: list[tuple[int, float]] = ()) -> list[str]:
    """n_runs finished runs (records like the trainer's, a short events file each) plus one
    running run per (pid, create_time) given, one file per run written in one go, like a
    long-lived store. Returns the running runs' ids."""
    from advtui.core.config import DEFENSES, build_config
    from advtui.store.registry import RUNS, Registry

    rng = random.Random(0)
    registry = Registry(root)
    base = time.time() - 90 * 86400
    running_ids = []
    docs = []
    for i in range(n_runs + len(running_pids)):
        defense = DEFENSES[i % (len(DEFENSES) - 1)]
        running = i >= n_runs
        run_id = f"{i:06x}"
        config = build_config(defense, epochs=100, seed=i % 5, group=f"exp{i // 5}", name=f"{defense}-exp{i // 5}-s{i % 5}",
                              device="cuda").to_dict()
        epoch = rng.randint(1, 40) if running else 100
        metrics = {"epoch": epoch, "train_loss": 0.3 + rng.random(), "train_acc": 90.0, "inner_final_loss": 1.2,
                   "epoch_time": 30 + rng.random() * 20, "lr": 0.01, "test_clean_acc": 95 + rng.random() * 4,
                   "test_pgd_acc": 40 + rng.random() * 50, "test_n": 1000}
        doc = {"id": run_id, "name": config["name"], "group": config["group"], "defense": defense, "dataset": "mnist",
               "model": "smallcnn", "config": config, "status": "running" if running else "finished",
               "epoch": epoch, "epochs": 100, "checkpoints": {"last": "checkpoints/last.pt"}, "metrics": metrics,
               "host": os.uname().nodename, "device": "cuda:0 (NVIDIA H100 80GB HBM3)",
               "created": base + 600 * i, "started": base + 600 * i + 5, "ended": None if running else base + 600 * i + 3000,
               "train_time": None if running else 2995.0, "model_params": 312202, "maximizer_params": 120}
        if running:
            pid, created = running_pids[i - n_runs]
            doc.update(pid=pid, pid_start_time=created, started=time.time() - 1200)
            running_ids.append(run_id)
        docs.append(doc)
        folder = root / run_id
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "events.jsonl", "w") as f:
            f.write(json.dumps({"kind": "start", "time": doc["started"], "config": config, "epoch": 0, "batch": 0}) + "\n")
            if not running:
                for e in range(1, 11):
                    f.write(json.dumps({"kind": "epoch", "time": doc["started"] + 30 * e, "epoch": e, **metrics}) + "\n")
    registry.insert_multiple(RUNS, docs)
    registry.runs()  # a long-lived store has been listed before: its listing cache exists
    return running_ids


# -- the measured process -------------------------------------------------------------------------------
def _cpu() -> float:
    """CPU seconds this process used since it started (all its threads): on a shared machine the
    wall time also counts the other processes' turns, this does not."""
    times = os.times()
    return times.user + times.system


def child_first_paint(root: str, t_launch: float, bare: bool) -> None:
    """Run headless; print seconds from ``t_launch`` to the first paint with the table filled."""
    if bare:
        from textual.app import App
        from textual.widgets import Static

        class Bare(App):
            def compose(self):
                yield Static("hello")

            def on_mount(self) -> None:
                self.call_after_refresh(lambda: (print(f"PAINT {time.time() - t_launch:.4f} cpu {_cpu():.4f}", flush=True),
                                                 self.exit()))

        Bare().run(headless=True, size=SIZE)
        return

    import advtui.main  # noqa: F401 - what the `advtui` command imports before opening the dashboard
    from advtui.tui.app import AdvtuiApp

    app = AdvtuiApp(root)  # as `advtui` opens it: scheduler on

    def check() -> None:
        screen = app.screen
        if getattr(screen, "loaded", False) and screen.table.row_count > 0:
            # The next refresh after the data landed is the first full paint.
            app.call_after_refresh(lambda: (print(f"PAINT {time.time() - t_launch:.4f} cpu {_cpu():.4f} rows "
                                                  f"{screen.table.row_count}", flush=True), app.exit()))
        else:
            app.set_timer(0.005, check)

    app.call_later(check)
    app.run(headless=True, size=SIZE)


def child_stream(root: str, select: str) -> None:
    """Run headless until killed, with ``select`` highlighted (its plots redraw as it streams)."""
    from advtui.tui.app import AdvtuiApp

    app = AdvtuiApp(root)

    def pick() -> None:
        screen = app.screen
        if getattr(screen, "loaded", False) and screen.table.select_key(select):
            print("READY", flush=True)
        else:
            app.set_timer(0.05, pick)

    app.call_later(pick)
    app.run(headless=True, size=SIZE)


def writers(root: str, run_ids: list[str], stop_after: float) -> None:
    """Append realistic events to each run's stream at realistic rates (one thread per run)."""
    from advtui.core.events import EventWriter

    def write(run_id: str, seed: int) -> None:
        rng = random.Random(seed)
        out = EventWriter(Path(root) / run_id / "events.jsonl")
        step, t_end = 0, time.time() + stop_after
        next_inner, next_epoch, epoch = time.time(), time.time() + EPOCH_EVERY_S, 1
        while time.time() < t_end:
            step += 10
            out.emit("step", epoch=epoch, batch=step % 469, batches=469, step=step, loss=0.5 + 0.3 * math.exp(-step / 5000)
                     + 0.05 * rng.random(), train_acc=90 * rng.random(), clean_acc=95.0, lr=0.01, images_per_s=6400.0)
            if time.time() >= next_inner:
                losses = [0.4 + 0.9 * (1 - math.exp(-0.5 * t)) + 0.02 * rng.random() for t in range(11)]
                out.emit("inner", epoch=epoch, batch=step % 469, step=step, maximizer="rnn", losses=losses,
                         pgd=[v * 0.95 for v in losses])
                next_inner += 1 / INNER_HZ
            if time.time() >= next_epoch:
                out.emit("epoch", epoch=epoch, train_loss=0.5, train_acc=90.0, inner_final_loss=1.2, epoch_time=30.0,
                         lr=0.01, test_clean_acc=97.0, test_pgd_acc=60.0, test_n=1000)
                epoch, next_epoch = epoch + 1, next_epoch + EPOCH_EVERY_S
            time.sleep(1 / STEP_HZ)
        out.close()

    threads = [threading.Thread(target=write, args=(rid, i), daemon=True) for i, rid in enumerate(run_ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# -- the parent ------------------------------------------------------------------------------------------
def first_paint(root: Path, bare: bool) -> tuple[float, float]:
    """(wall seconds from launch, CPU seconds of the process) to the first full paint."""
    t_launch = time.time()
    out = subprocess.run([sys.executable, str(HERE), "--child-paint", str(root), str(t_launch)] + (["--bare"] if bare else []),
                         capture_output=True, text=True, timeout=120)
    line = next((l for l in out.stdout.splitlines() if l.startswith("PAINT")), None)
    if line is None:
        raise SystemExit(f"the dashboard did not paint:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    fields = line.split()
    return float(fields[1]), float(fields[3])


def cpu_while_streaming(root: Path, select: str | None, streams: list[str], window: float) -> float:
    """Percent of one core the dashboard process (and its threads) used over ``window`` s."""
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, str(HERE), "--child-stream", str(root), select or "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    writer = None
    try:
        assert proc.stdout is not None
        deadline = time.time() + 120
        while time.time() < deadline:
            line = proc.stdout.readline()
            if line.startswith("READY"):
                break
        if streams:
            writer = subprocess.Popen([sys.executable, str(HERE), "--child-write", str(root), ",".join(streams),
                                       str(window + 15)])
        time.sleep(5)  # warm-up: the first tails read the whole files
        p = psutil.Process(proc.pid)
        c0, t0 = p.cpu_times(), time.perf_counter()
        time.sleep(window)
        c1, t1 = p.cpu_times(), time.perf_counter()
        return 100.0 * ((c1.user - c0.user) + (c1.system - c0.system)) / (t1 - t0)
    finally:
        proc.terminate()
        proc.wait(10)
        if writer is not None:
            writer.terminate()
            writer.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--window", type=float, default=30.0, help="seconds of CPU measurement")
    parser.add_argument("--repeat", type=int, default=3, help="first-paint launches (median reported)")
    parser.add_argument("--only", choices=("paint", "cpu"), help="run one of the two measurements")
    parser.add_argument("--root", help="runs directory for the first-paint figures, kept (built if empty)")
    parser.add_argument("--child-paint", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-stream", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-write", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_paint:
        child_first_paint(args.child_paint[0], float(args.child_paint[1]), args.bare)
        return
    if args.child_stream:
        child_stream(args.child_stream[0], args.child_stream[1])
        return
    if args.child_write:
        writers(args.child_write[0], args.child_write[1].split(","), float(args.child_write[2]))
        return

    print(f"python {sys.version.split()[0]}, {psutil.cpu_count()} CPUs, load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="advtui-bench-") as tmp:
        if args.only != "cpu":
            paint_figures(Path(args.root) if args.root else Path(tmp) / "paint", args)
        if args.only != "paint":
            cpu_figures(Path(tmp) / "stream", args)


def paint_figures(root: Path, args: argparse.Namespace) -> None:
    t = time.perf_counter()
    built = not (root / "registry.json").exists()
    if built:
        build_registry(root, args.runs)
    files = list(root.glob("*/run.json"))
    size = sum(p.stat().st_size for p in files)
    print(f"registry: {len(files)} runs, {size / 2**20:.1f} MiB, "
          + (f"built in {time.perf_counter() - t:.1f}s" if built else f"kept in {root}"))
    bare, dash = [], []
    for _ in range(args.repeat):  # interleaved, so a change of load on the machine hits both alike
        bare.append(first_paint(root, bare=True))
        dash.append(first_paint(root, bare=False))
    b, d = statistics.median(w for w, _ in bare), statistics.median(w for w, _ in dash)
    bc, dc = statistics.median(c for _, c in bare), statistics.median(c for _, c in dash)
    print(f"first full paint, launch to painted table ({args.runs} runs), median of {args.repeat}: "
          f"{d:.2f}s (runs {', '.join(f'{w:.2f}' for w, _ in dash)}); bare Textual app: {b:.2f}s; ratio {d / b:.1f}x")
    print(f"CPU time of the process to that paint, median: {dc:.2f}s (runs {', '.join(f'{c:.2f}' for _, c in dash)}); "
          f"bare Textual app: {bc:.2f}s")


def cpu_figures(root: Path, args: argparse.Namespace) -> None:
    # 4 running runs whose pid is a live process (so reconciliation leaves them running).
    me = psutil.Process()
    running = build_registry(root, args.runs, [(me.pid, me.create_time())] * STREAMING)
    idle = cpu_while_streaming(root, running[0], [], args.window)
    busy = cpu_while_streaming(root, running[0], running, args.window)
    print(f"dashboard CPU, {STREAMING} runs streaming ({STEP_HZ:g} step + {INNER_HZ:g} inner events/s each), "
          f"one selected, {args.runs} runs in the table, {args.window:g}s window: {busy:.1f}% of one core; "
          f"same with nothing streaming: {idle:.1f}%")


if __name__ == "__main__":
    main()
