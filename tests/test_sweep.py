"""Sweeps: expansion, checks before queuing, re-runs, the comparison, and a real tiny sweep."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from advtui import sweep as sweeps
from advtui.cli.sweep import build_run_config, spec_from_flags, typer_options
from advtui.store import lifecycle
from advtui.jobs.queue import finish_job, jobs_of_run, list_jobs
from advtui.store.registry import Registry
from advtui.sweep_results import compare_sweep, paired_p, t_interval

TINY = ["--defense", "plain", "--epochs", "1", "--train-limit", "128", "--test-limit", "64",
        "--eval-limit", "32", "--batch-size", "32", "--device", "cpu"]


def advtui(*args: str, root: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADVTUI_RUNS": str(root)}
    return subprocess.run([sys.executable, "-m", "advtui", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def every_file(root: Path) -> dict[str, bytes]:
    """Every file under the runs folder (records, queue, sweep definitions) by relative path."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


def flags_spec(grid: list[str], seeds: str | None = "0,1", random_n: int = 0, order: str = "given",
               name: str | None = "s", **fixed) -> sweeps.SweepSpec:
    options = {name_: None for name_ in typer_options().params}
    options.update({"defense": "plain", "name": name})
    options.update(fixed)
    return spec_from_flags(options, grid, seeds, random_n, 0, order, 0, None, None)


# -- expansion ----------------------------------------------------------------------------------------
def test_grid_expands_every_combination_with_each_seed():
    spec = flags_spec(["lr=0.01,0.1", "inner-steps=5,10,20"], seeds="0-2")
    runs = sweeps.plan(spec, build_run_config)
    assert len(runs) == 2 * 3 * 3
    assert [r.key for r in runs[:4]] == ["c1-s0", "c1-s1", "c1-s2", "c2-s0"]
    assert runs[0].combination.values == {"lr": 0.01, "inner_steps": 5}
    assert runs[-1].combination.values == {"lr": 0.1, "inner_steps": 20}
    # Values come typed through the options' converters, and configs through `advtui run`'s path.
    assert all(type(r.config.lr) is float and type(r.config.inner_steps) is int for r in runs)
    assert {(r.config.lr, r.config.inner_steps, r.config.seed) for r in runs} == {
        (lr, t, s) for lr in (0.01, 0.1) for t in (5, 10, 20) for s in (0, 1, 2)}
    assert runs[4].config.name == "s-c2-s1" and runs[4].config.group == "s"
    assert runs[0].config.epochs == 100 and runs[0].config.milestones == [55]  # the preset fills the rest
    shuffled = sweeps.plan(flags_spec(["lr=0.01,0.1", "inner-steps=5,10,20"], seeds="0-2", order="shuffled"),
                           build_run_config)
    assert sorted(r.key for r in shuffled) == sorted(r.key for r in runs)
    assert [r.key for r in shuffled] != [r.key for r in runs]
    again = sweeps.plan(flags_spec(["lr=0.01,0.1", "inner-steps=5,10,20"], seeds="0-2", order="shuffled"),
                        build_run_config)
    assert [r.key for r in again] == [r.key for r in shuffled]  # seeded by --random-seed


def test_defense_and_flags_can_be_swept():
    spec = flags_spec(["defense=plain,advtrain", "amp=true,false", "rnn-grad-input=sign,rms"], seeds="3", defense=None)
    runs = sweeps.plan(spec, build_run_config)
    assert len(runs) == 8 and {r.config.defense for r in runs} == {"plain", "advtrain"}
    assert {r.config.amp for r in runs} == {True, False} and {r.config.seed for r in runs} == {3}


def test_random_search_samples_ranges_seeded():
    grid = ["rnn-lr=1e-4:1e-1", "inner-steps=2:20", "rnn-grad-input=sign,rms", "eps=0.1:0.3"]
    spec = flags_spec(grid, seeds="0,1", random_n=6)
    runs = sweeps.plan(spec, build_run_config)
    combos = {r.combination.index: r.combination.values for r in runs}
    assert len(combos) == 6 and len(runs) == 12
    for values in combos.values():
        assert 1e-4 <= values["rnn_lr"] <= 1e-1 and float(f"{values['rnn_lr']:.3g}") == values["rnn_lr"]
        assert type(values["inner_steps"]) is int and 2 <= values["inner_steps"] <= 20
        assert values["rnn_grad_input"] in ("sign", "rms") and 0.1 <= values["eps"] <= 0.3
    same = sweeps.plan(flags_spec(grid, seeds="0,1", random_n=6), build_run_config)
    assert [r.combination.values for r in same] == [r.combination.values for r in runs]
    # The rate is drawn log-uniformly: over many draws about half fall below the geometric middle.
    many = sweeps.expand(flags_spec(["rnn-lr=1e-4:1e-1"], random_n=400))
    below = sum(c.values["rnn_lr"] < math.sqrt(1e-4 * 1e-1) for c in many)
    assert 150 < below < 250
    # A small discrete space gives its distinct combinations, not repeats.
    assert len(sweeps.expand(flags_spec(["init=normal,uniform"], random_n=5))) == 2


def test_sweep_file_round_trips_and_reproduces_the_flags(tmp_path):
    spec = flags_spec(["lr=0.01,0.1", "rnn-lr=1e-4:1e-1"], seeds="0,1", random_n=3, epochs=2)
    text = sweeps.to_toml(spec)
    path = tmp_path / "s.toml"
    path.write_text(text)
    back = sweeps.read_file(path, typer_options())
    assert back == spec
    assert [r.config.to_dict() for r in sweeps.plan(back, build_run_config)] == \
        [r.config.to_dict() for r in sweeps.plan(spec, build_run_config)]


# -- bad input: one line, non-zero exit, nothing stored ---------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--grid", "nosuch=1,2"], "unknown training option 'nosuch'"),
    (["--grid", "epochs=1,2.5"], "epochs=2.5: Invalid value for '--epochs'"),
    (["--grid", "lr="], "lr has no values"),
    (["--grid", "lr"], "write NAME=V1,V2"),
    ([], "nothing to sweep"),
    (["--grid", "lr=1e-3:1e-1"], "is a range: ranges need --random N"),
    (["--grid", "seed=1,2"], "seed cannot be swept"),
    (["--grid", "lr=0.1,0.1"], "lr lists 0.1 twice"),
    (["--grid", "lr=0.01,0.1", "--lr", "0.5"], "lr is both fixed"),
    (["--grid", "lr=0.01,-1,0.1", "--seeds", "0,1"], "combination 2 (lr=-1, seed 0): lr must be positive"),
    (["--grid", "defense=plain,nosuch"], "combination 2 (defense=nosuch, seed 0): unknown defense 'nosuch'"),
    (["--grid", "lr=0.01,0.02,0.03,0.04,0.05", "--grid", "batch-size=16,32,64,128", "--seeds", "0-3"],
     "this sweep has 80 runs (more than 64): pass --yes"),
    (["--grid", "lr=0.01", "--auto-eval", "nosuch-3"], "nosuch"),
])
def test_bad_sweep_is_one_line_and_queues_nothing(tmp_path, args, message):
    root = tmp_path / "runs"
    assert advtui("sweep", "--defense", "plain", *TINY[2:], "--grid", "momentum=0.5", "--name", "kept",
                  root=root).returncode == 0
    before = every_file(root)
    fixed = [] if any(a.startswith("defense=") for a in args) else ["--defense", "plain"]
    proc = advtui("sweep", *fixed, "--name", "bad", *args, root=root)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert every_file(root) == before
    assert not (root / "sweeps" / "bad.toml").exists()


def test_a_sweep_file_that_does_not_parse_is_one_line(tmp_path):
    root = tmp_path / "runs"
    for text, message in [("name = \"x\"\n[grid\nlr = [1]", "is not valid TOML"),
                          ("name = \"x\"\n[grid]\nlr = 0.1\n", "grid lr must be a list"),
                          ("name = \"x\"\nbogus = 1\n[grid]\nlr = [0.1]\n", "unknown key 'bogus'"),
                          ("name = \"x\"\n[fixed]\ndefense = \"plain\"\n[grid]\nepochs = [\"two\"]\n", "Invalid value for '--epochs'")]:
        path = tmp_path / "bad.toml"
        path.write_text(text)
        proc = advtui("sweep", "--file", str(path), root=root)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and message in lines[0], proc.stderr
    assert every_file(root) == {}


def test_dry_run_lists_runs_and_prints_the_file_without_queuing(tmp_path):
    root = tmp_path / "runs"
    proc = advtui("sweep", *TINY, "--grid", "lr=0.01,0.05", "--grid", "momentum=0,0.9", "--seeds", "0,1",
                  "--name", "tiny", "--dry-run", root=root)
    assert proc.returncode == 0, proc.stderr
    assert "4 combination(s) x 2 seed(s) = 8 run(s)" in proc.stdout
    assert "tiny-c4-s1" in proc.stdout and "[grid]" in proc.stdout
    assert every_file(root) == {}
    toml_text = proc.stdout[proc.stdout.index("# advtui sweep --file"):]
    (tmp_path / "tiny.toml").write_text(toml_text)
    again = advtui("sweep", "--file", str(tmp_path / "tiny.toml"), "--dry-run", root=root)
    assert again.returncode == 0 and again.stdout == proc.stdout


# -- queuing and re-running -------------------------------------------------------------------------------
def test_rerun_queues_only_missing_and_failed(tmp_path):
    root = tmp_path / "runs"
    registry = Registry(root)
    spec = flags_spec(["lr=0.01,0.05"], seeds="0,1", name="again")
    planned = sweeps.plan(spec, build_run_config)
    sweeps.queue_sweep(registry, spec, planned[:3])  # as if interrupted before the last run
    states = {s.key: s for s in sweeps.match_runs(registry, spec)}
    assert states["c2-s1"].record is None and states["c1-s0"].status == "queued"
    failed, finished = states["c1-s0"].record["id"], states["c1-s1"].record["id"]
    for run_id, status in ((failed, "failed"), (finished, "done")):
        (job,) = jobs_of_run(registry, run_id, kind="train")
        finish_job(registry, job, status)
    lifecycle.mark_failed(registry, failed, "diverged")
    lifecycle.mark_finished(registry, finished, metrics={"test_pgd_acc": 10.0})
    jobs_before = len(list_jobs(registry))

    proc = advtui("sweep", "--file", str(root / "sweeps" / "again.toml"), root=root)
    assert proc.returncode == 0, proc.stderr
    assert "1 new run(s) queued (c2-s1)" in proc.stdout
    assert "1 failed or killed run(s) queued again, from their last checkpoint (c1-s0)" in proc.stdout
    assert "2 already queued, running or finished" in proc.stdout
    jobs = list_jobs(registry)
    assert len(jobs) == jobs_before + 2
    assert Registry(root).get_run(failed)["status"] == "queued"
    assert Registry(root).get_run(finished)["status"] == "finished"
    assert len([r for r in Registry(root).runs() if r.get("group") == "again"]) == 4
    # Nothing left to queue: a third call queues nothing.
    third = advtui("sweep", "--file", str(root / "sweeps" / "again.toml"), root=root)
    assert "0 new run(s) queued" in third.stdout and "4 already" in third.stdout
    assert len(list_jobs(Registry(root))) == len(jobs)


def test_queued_as_one_sweep_with_priority_and_auto_eval(tmp_path):
    root = tmp_path / "runs"
    options = {name: None for name in typer_options().params}
    options.update({"defense": "plain", "name": "prio"})
    spec = spec_from_flags(options, ["lr=0.01,0.05"], "0,1", 0, 0, "given", 7, "natural,pgd-10", 64)
    outcome = sweeps.queue_sweep(Registry(root), spec, sweeps.plan(spec, build_run_config))
    assert len(outcome.new) == 4 and not outcome.again and not outcome.kept
    jobs = list_jobs(Registry(root))
    trains = [j for j in jobs if j["kind"] == "train"]
    evals = [j for j in jobs if j["kind"] == "eval"]
    assert len(trains) == 4 and len(evals) == 4 and all(j["priority"] == 7 for j in jobs)
    assert all(e["attacks"] == ["natural", "pgd-10"] and e["eval_options"] == {"limit": 64} for e in evals)
    assert {e["depends_on"][0] for e in evals} == {t["id"] for t in trains}
    runs = Registry(root).runs()
    assert {r["group"] for r in runs} == {"prio"} and sorted(r["name"] for r in runs) == [
        "prio-c1-s0", "prio-c1-s1", "prio-c2-s0", "prio-c2-s1"]
    assert sweeps.read_file(root / "sweeps" / "prio.toml") == spec


def test_same_name_with_another_definition_is_refused(tmp_path):
    root = tmp_path / "runs"
    assert advtui("sweep", *TINY, "--grid", "lr=0.01,0.05", "--name", "one", root=root).returncode == 0
    before = every_file(root)
    proc = advtui("sweep", *TINY, "--grid", "lr=0.01,0.5", "--name", "one", root=root)
    assert proc.returncode != 0 and "sweep 'one' exists with another definition" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and every_file(root) == before


# -- comparing ------------------------------------------------------------------------------------------
def crafted_sweep(root: Path, robust: dict[str, list[float]], seeds: str = "0,1,2",
                  key_prefix: str = "val_") -> tuple[Registry, sweeps.SweepSpec]:
    """A sweep over lr whose runs finished with the given per-seed robust accuracies (on the
    validation split, or with ``key_prefix="test_"`` as runs recorded without one)."""
    registry = Registry(root)
    spec = flags_spec([f"lr={','.join(robust)}"], seeds=seeds, name="crafted")
    sweeps.queue_sweep(registry, spec, sweeps.plan(spec, build_run_config))
    for state in sweeps.match_runs(registry, spec):
        value = robust[sweeps.value_text(state.combination.values["lr"])][state.seed]
        (job,) = jobs_of_run(registry, state.record["id"], kind="train")
        finish_job(registry, job, "done")
        lifecycle.mark_finished(registry, state.record["id"],
                                metrics={key_prefix + "pgd_acc": value, key_prefix + "clean_acc": value + 50})
    return registry, spec


def test_compare_sweep_aggregates_seeds_and_marks_only_a_significant_best(tmp_path):
    from scipy import stats

    robust = {"0.01": [40.0, 42.0, 41.0], "0.05": [30.0, 33.0, 31.0], "0.1": [39.0, 43.0, 40.0]}
    registry, spec = crafted_sweep(tmp_path / "runs", robust)
    comparison = compare_sweep(registry, spec)
    assert [r.combination.index for r in comparison.rows] == [1, 3, 2]  # by mean val-robust, highest first
    top = comparison.rows[0].cells["val-robust"]
    _, half, _ = t_interval([40.0, 42.0, 41.0])
    assert top.mean == pytest.approx(41.0) and top.n == 3
    assert half == pytest.approx(stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3))
    assert top.half_width == pytest.approx(half)
    # c1 vs c3 differ by 1, -1, 1 over the matched seeds: not significant, so no best is marked.
    assert not any(r.best for r in comparison.rows)
    assert any("not significantly better than c3" in n for n in comparison.notes)
    assert not any("for monitoring only" in n for n in comparison.notes)

    proc = advtui("compare", "--sweep", "crafted", "--sort", "val-clean", root=tmp_path / "runs")
    assert proc.returncode == 0, proc.stderr
    assert "sorted by val-clean" in proc.stdout and "41.00 ± 2.48 (n=3)" in proc.stdout
    data = json.loads(advtui("compare", "--sweep", "crafted", "--json", root=tmp_path / "runs").stdout)
    assert data["swept"] == ["lr"] and [r["combination"] for r in data["rows"]] == [1, 3, 2]


def test_compare_sweep_marks_a_clear_best_and_says_n_a_under_three_seeds(tmp_path):
    robust = {"0.01": [40.0, 45.0, 41.0], "0.05": [30.0, 33.0, 31.0]}
    registry, spec = crafted_sweep(tmp_path / "a", robust)
    comparison = compare_sweep(registry, spec)
    assert comparison.rows[0].best and not comparison.rows[1].best
    matched, p = paired_p({0: 40.0, 1: 45.0, 2: 41.0}, {0: 30.0, 1: 33.0, 2: 31.0})
    assert matched == 3 and p < 0.05
    two, spec2 = crafted_sweep(tmp_path / "b", {"0.01": [40.0, 45.0], "0.05": [30.0, 33.0]}, seeds="0,1",
                               key_prefix="test_")
    small = compare_sweep(two, spec2)
    assert any("are their test-set numbers, for monitoring only" in n for n in small.notes)
    assert small.rows[0].cells["val-robust"].half_width is None and not any(r.best for r in small.rows)
    assert any("best not marked: the paired test needs at least 3 matched seeds" in n for n in small.notes)
    proc = advtui("compare", "--sweep", "crafted", root=tmp_path / "b")
    assert "42.50 (±n/a, n=2)" in proc.stdout
    bad = advtui("compare", "--sweep", "crafted", "--sort", "nosuch", root=tmp_path / "b")
    assert bad.returncode != 0 and "--sort 'nosuch' is not a metric" in bad.stderr
    missing = advtui("compare", "--sweep", "nosuch", root=tmp_path / "b")
    assert missing.returncode != 0 and "no sweep 'nosuch'" in missing.stderr and "crafted" in missing.stderr


def test_report_sweep_draws_png_and_terminal(tmp_path):
    robust = {"0.01": [40.0, 45.0, 41.0], "0.05": [30.0, 33.0, 31.0]}
    crafted_sweep(tmp_path / "runs", robust)
    proc = advtui("report", "--sweep", "crafted", "--out", str(tmp_path / "out"), root=tmp_path / "runs")
    assert proc.returncode == 0, proc.stderr
    png = tmp_path / "out" / "sweep-crafted.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "val-robust vs lr" in proc.stdout and "2 metric(s) x 1 swept parameter(s)" in proc.stdout


# -- a real tiny sweep ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_tiny_sweep_drained_by_worker_then_compared(runs_root):
    start = time.monotonic()
    queued = advtui("sweep", *TINY, "--grid", "lr=0.01,0.05", "--grid", "momentum=0,0.9", "--seeds", "0,1",
                    "--name", "tiny", "--auto-eval", "natural", "--auto-eval-limit", "64", root=runs_root)
    assert queued.returncode == 0, queued.stderr
    assert "8 new run(s) queued" in queued.stdout
    worker = advtui("worker", "--once", "--cpu-slots", "2", root=runs_root, timeout=1200)
    assert worker.returncode == 0, worker.stderr[-2000:]
    runs = [r for r in Registry(runs_root).runs() if r.get("group") == "tiny"]
    assert len(runs) == 8 and all(r["status"] == "finished" for r in runs)
    assert all(j["status"] == "done" for j in list_jobs(Registry(runs_root)))
    data = json.loads(advtui("compare", "--sweep", "tiny", "--json", root=runs_root).stdout)
    assert len(data["rows"]) == 4
    for row in data["rows"]:
        assert set(row["values"]) == {"lr", "momentum"}
        assert row["cells"]["val-robust"]["n"] == 2 and row["cells"]["natural"]["n"] == 2
        assert row["cells"]["val-robust"]["half_width"] is None  # two seeds: no interval
        assert 0 <= row["cells"]["natural"]["mean"] <= 100
    table = advtui("compare", "--sweep", "tiny", root=runs_root)
    assert table.returncode == 0 and "2 finished" in table.stdout and "(±n/a, n=2)" in table.stdout
    again = advtui("sweep", "--file", str(runs_root / "sweeps" / "tiny.toml"), root=runs_root)
    assert "0 new run(s) queued" in again.stdout and "8 already queued, running or finished" in again.stdout
    print(f"tiny sweep: 8 runs + 8 evaluations in {time.monotonic() - start:.0f} s")


def test_the_readme_sweeps_section_names_real_options():
    from test_readme_tour import _advtui_commands, _options_of, _section

    commands = _advtui_commands(_section("Sweeps"))
    assert {w[0] for w in commands} == {"sweep", "compare", "report"}
    for words in commands:
        help_text = _options_of(words[0])
        for word in words[1:]:
            if word.startswith("--"):
                assert word.split("=")[0] in help_text, f"`advtui {' '.join(words)}`: {word} is no option"
