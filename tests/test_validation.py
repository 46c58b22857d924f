"""Every input checked before anything is written, and one line instead of a traceback or a hang.

The first test walks every numeric option of every command (found by introspecting the Typer
program, so a new option is walked too) with 0, -1, NaN, infinity and a huge value: each is
refused in one line that names the option, with the store byte-for-byte as before, or it is a
legal value (listed below) that the command accepts. The cases after it are the ones found by
hand, each with its exit code, its line, the status afterwards and the store's bytes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import typing

import pytest
import test_faults
from store_support import store_snapshot
from test_faults import REPO, TINY, cli, ids, one_error_line, record

from advtui.core.errors import AdvtuiError
from advtui.store.registry import Registry

# The fault tests' fixtures: two finished tiny runs, trained once per module, copied per test.
_tiny_runs = test_faults._tiny_runs
runs = test_faults.runs

HUGE_INT = "1" + "0" * 30
VALUES = ("0", "-1", "nan", "inf", "huge")


class Reached(AdvtuiError):
    """Raised in place of a command's work (training, attacking, scheduling): the options passed."""

    exit_code = 97


def _reached(*args, **kwargs):
    raise Reached("the command's work was reached")


# Values a command takes, by option (every command that has it), else by (command, option).
LEGAL_BY_OPTION = {
    "--seed": {"0"}, "--priority": {"0", "-1"}, "--momentum": {"0"}, "--weight-decay": {"0"}, "--beta": {"0"},
    "--l2lda-latent": {"0"}, "--l2lda-diversity": {"0"}, "--grace": {"0"}, "--min-free-memory": {"0"},
    "--max-utilization": {"0"}, "--gpus-per-job": {"0"}, "--cpus-per-job": {"0"}, "--val-size": {"0"},
    "--random": {"0"}, "--random-seed": {"0"},
}
LEGAL_BY_COMMAND = {
    ("eval", "--eps"): {"0"}, ("compare", "--eps"): {"0"}, ("queue eval", "--eps"): {"0"}, ("analyze trajectories", "--eps"): {"0"},
}
# The command line each command is walked with ({run}: a finished run), the tested option added.
BASE = {
    "": ["ls"], "run": ["run", "-d", "plain", *TINY], "queue train": ["queue", "train", "-d", "plain"],
    "eval": ["eval", "{run}"], "queue eval": ["queue", "eval", "{run}"], "resume": ["resume", "{run}", "--epochs", "3"],
    "kill": ["kill", "{run}"], "worker": ["worker", "--once"], "gpus": ["gpus", "--watch"],
    "reproduce": ["reproduce", "table1", "--dry-run"], "analyze trajectories": ["analyze", "trajectories", "{run}"],
    "analyze landscape": ["analyze", "landscape", "{run}"], "compare": ["compare", "{run}"],
    "sweep": ["sweep", "-d", "plain", *TINY, "--grid", "lr=0.01,0.02", "--dry-run"],
}


def numeric_options() -> list[tuple[str, str, type]]:
    """(command path, option, int or float) for every numeric option of the program."""
    import typer.main

    from advtui.main import app

    found = []

    def walk(command, path: list[str]) -> None:
        for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
            walk(sub, [*path, name])
        for param in command.params:
            annotation = param.get_runtime_param().annotation
            kinds = [a for a in (typing.get_args(annotation) or (annotation,)) if a in (int, float)]
            if kinds and param.opts[0].startswith("--"):
                found.append((" ".join(path), param.opts[0], kinds[0]))

    walk(typer.main.get_command(app), [])
    return found


def _argv(command: str, option: str, value: str, run_id: str) -> list[str]:
    base = [run_id if part == "{run}" else part for part in BASE[command]]
    if option in base:  # the base line sets it: the walked value replaces it
        at = base.index(option)
        base = base[:at] + base[at + 2:]
    return [option, value, *base] if command == "" else [*base, option, value]


def test_every_numeric_option_of_every_command_is_checked(runs, tmp_path, monkeypatch, capsys):
    import advtui.cli.jobs
    import advtui.cli.runs
    import advtui.evaluation

    for owner, name in ((advtui.cli.runs, "execute_run"), (advtui.evaluation, "evaluate_run"),
                        (advtui.evaluation, "analyze_landscape"), (advtui.evaluation, "analyze_trajectories"),
                        (advtui.cli.jobs, "kill_target"), (advtui.cli.jobs, "Scheduler"), (advtui.cli.jobs, "Live")):
        monkeypatch.setattr(owner, name, _reached)
    run_a = ids(runs)["a"]
    options = numeric_options()
    walked = {command for command, _, _ in options}
    assert walked - set(BASE) == set(), f"walk these commands too: {sorted(walked - set(BASE))}"
    assert len(options) > 60
    pristine = tmp_path / "pristine"
    shutil.copytree(runs, pristine)
    problems = []
    for command, option, kind in options:
        legal = LEGAL_BY_OPTION.get(option, set()) | LEGAL_BY_COMMAND.get((command, option), set())
        for value in VALUES:
            text = (HUGE_INT if kind is int else "1e30") if value == "huge" else value
            before = store_snapshot(runs)
            code, _, err = cli(monkeypatch, capsys, *_argv(command, option, text, run_a))
            case = f"advtui {command} {option} {text}: exit {code}: {err.strip()[:300]}"
            if value in legal:
                if code not in (0, Reached.exit_code):
                    problems.append("refused a legal value: " + case)
                shutil.rmtree(runs)  # what it queued goes: the next case starts from the same store
                shutil.copytree(pristine, runs)
                continue
            lines = err.strip().splitlines()
            if code != 2 or len(lines) != 1 or not lines[0].startswith("error: ") or "Traceback" in err:
                problems.append("not one refusal line: " + case)
            elif option.lstrip("-") not in lines[0]:
                problems.append("the line does not name the option: " + case)
            if store_snapshot(runs) != before:
                problems.append("the store changed: " + case)
    assert not problems, "\n".join(problems)


# == options checked before a record is created ==================================================
@pytest.mark.parametrize("model", ["wrn-5-1", "wrn-0-0", "wrn-4-1", "wrn-28-0"])
def test_a_wideresnet_that_cannot_be_built_leaves_no_record(runs, monkeypatch, capsys, model):
    before = store_snapshot(runs)
    code, _, err = cli(monkeypatch, capsys, "run", "-d", "plain", "--model", model, *TINY)
    assert code == 2
    one_error_line(err, f"model {model}: a WideResNet's")
    assert store_snapshot(runs) == before
    assert sorted(ids(runs)) == ["a", "b"]


def test_init_from_a_checkpoint_with_non_tensor_weights_is_refused_before_recording(runs, monkeypatch, capsys):
    from advtui.engine.checkpoint import load_checkpoint, save_checkpoint

    run_a = ids(runs)["a"]
    path = runs / run_a / "checkpoints" / "final.pt"
    state = load_checkpoint(path)
    key = next(iter(state["model"]))
    state["model"][key] = state["model"][key].tolist()  # same keys, a list where a tensor was
    save_checkpoint(path, state)
    before = store_snapshot(runs)
    code, _, err = cli(monkeypatch, capsys, "run", "-d", "plain", "--init-from", run_a, *TINY)
    assert code == 2
    one_error_line(err, "1 value(s) are not tensors", key)
    assert store_snapshot(runs) == before


@pytest.mark.parametrize("epochs, message", [
    ("1000000000", "--epochs must be between 1 and 100000, got 1000000000"),
    ("0", "--epochs must be between 1 and 100000, got 0"),
])
def test_resume_epochs_have_the_bounds_of_run(runs, monkeypatch, capsys, epochs, message):
    before = store_snapshot(runs)
    code, _, err = cli(monkeypatch, capsys, "resume", ids(runs)["a"], "--epochs", epochs)
    assert code == 2
    one_error_line(err, message)
    assert store_snapshot(runs) == before


@pytest.mark.parametrize("damage", ["truncated", "another model"])
def test_resume_of_a_finished_run_with_an_unusable_checkpoint_leaves_it_as_it_was(runs, monkeypatch, capsys, damage):
    from advtui.engine.checkpoint import load_checkpoint, save_checkpoint
    from advtui.engine.models import build_model

    run_a = ids(runs)["a"]
    path = runs / run_a / "checkpoints" / "last.pt"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        state = load_checkpoint(path)
        state["model"] = build_model("smallcnn", "cifar10").state_dict()
        save_checkpoint(path, state)
    before = store_snapshot(runs)
    code, _, err = cli(monkeypatch, capsys, "resume", run_a, "--epochs", "3")
    assert code == 2
    one_error_line(err, str(path))
    assert record(runs, run_a)["status"] == "finished"
    assert store_snapshot(runs) == before


@pytest.mark.parametrize("option, value, message", [
    ("--limit", "0", "--limit must be at least 1, got 0"),
    ("--eps", "nan", "--eps must be a finite number, got nan"),
    ("--batch-size", "-5", "--batch-size must be at least 1, got -5"),
    ("--seed", "-1", "--seed must be at least 0, got -1"),
])
def test_queue_eval_checks_its_options_as_eval_does(runs, monkeypatch, capsys, option, value, message):
    before = store_snapshot(runs)
    for command in (["queue", "eval"], ["eval"]):
        code, _, err = cli(monkeypatch, capsys, *command, ids(runs)["a"], option, value)
        assert code == 2
        one_error_line(err, message)
    assert store_snapshot(runs) == before


def test_the_dashboards_evaluation_form_is_checked_by_the_same_code(runs):
    from advtui.jobs.queue import queue_eval

    before = store_snapshot(runs)
    with pytest.raises(AdvtuiError, match=r"^--limit must be at least 1, got 0$"):
        queue_eval(Registry(runs), ids(runs)["a"], ["natural"], options={"limit": 0})
    with pytest.raises(AdvtuiError, match=r"^--auto-eval-limit|^--limit"):
        from advtui.core.config import build_config
        from advtui.jobs.queue import queue_train

        queue_train(Registry(runs), build_config("plain"), auto_eval="natural", eval_options={"limit": -3})
    assert store_snapshot(runs) == before


@pytest.mark.parametrize("command", [["eval"], ["queue", "eval"]])
def test_a_transfer_attack_whose_surrogate_is_the_target_is_refused(runs, monkeypatch, capsys, command):
    run_a = ids(runs)["a"]
    before = store_snapshot(runs)
    for spec in (f"transfer:{run_a}", "transfer:a", "natural,transfer-pgd-5:a"):
        code, _, err = cli(monkeypatch, capsys, *command, "a", "--attacks", spec, "--limit", "10")
        assert code == 2, err
        one_error_line(err, f"the surrogate is the evaluated run {run_a} itself", "white-box PGD")
    assert store_snapshot(runs) == before


@pytest.mark.parametrize("stop", [["queue", "cancel"], ["kill"]])
def test_a_resume_cancelled_before_it_starts_puts_the_finished_run_back(runs, monkeypatch, capsys, stop):
    run_a = ids(runs)["a"]
    run_file = runs / run_a / "run.json"
    before = run_file.read_bytes()
    code, out, err = cli(monkeypatch, capsys, "resume", run_a, "--epochs", "2")
    assert code == 0, err
    assert record(runs, run_a)["status"] == "queued"
    job = out.split(" as job ")[1].split(":")[0]
    code, out, err = cli(monkeypatch, capsys, *stop, job)
    assert code == 0, err
    assert "cancelled" in out
    assert run_file.read_bytes() == before  # finished 1/1, exactly as it was
    code, out, _ = cli(monkeypatch, capsys, "queue", "ls", "--status", "cancelled")
    assert code == 0 and job in out


@pytest.mark.parametrize("grace, message", [("-1", "--grace must be in [0, 86400] seconds, got -1"),
                                            ("nan", "--grace must be a finite number, got nan")])
def test_kill_refuses_a_grace_that_is_not_a_duration(runs, monkeypatch, capsys, grace, message):
    before = store_snapshot(runs)
    code, _, err = cli(monkeypatch, capsys, "kill", "a", "--grace", grace)
    assert code == 2
    one_error_line(err, message)
    assert store_snapshot(runs) == before


# == tracebacks and hangs ==========================================================================
def test_an_absurd_seed_range_is_one_line_at_once(runs, monkeypatch, capsys):
    before = store_snapshot(runs)
    start = time.perf_counter()
    code, _, err = cli(monkeypatch, capsys, "queue", "train", "-d", "plain", "--seeds", "0-100000000")
    assert time.perf_counter() - start < 5
    assert code == 2
    one_error_line(err, "--seeds names 100000001 seeds; at most 1000 runs are queued at once")
    assert store_snapshot(runs) == before


def test_seed_lists_expand_in_linear_time_without_repeats():
    from advtui.options import expand_seeds

    assert expand_seeds("3,0-2,2,1") == [3, 0, 1, 2]
    start = time.perf_counter()
    assert expand_seeds("0-999,0-999") == list(range(1000))  # was quadratic: a list searched per seed
    assert time.perf_counter() - start < 0.1
    with pytest.raises(AdvtuiError, match="runs backwards"):
        expand_seeds("5-2")


def test_eval_device_names(runs, monkeypatch, capsys):
    before = store_snapshot(runs)
    code, _, err = cli(monkeypatch, capsys, "eval", "a", "--device", "gpu")
    assert code == 2
    one_error_line(err, "--device must be auto, cpu, cuda or cuda:N, got 'gpu'")
    assert store_snapshot(runs) == before
    code, out, err = cli(monkeypatch, capsys, "eval", "a", "--device", "cpu:0", "-a", "natural", "--limit", "10")
    assert code == 0, err
    assert "natural" in out and "corrupt" not in out + err


def test_gpus_watch_refuses_a_nan_interval(runs, monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "gpus", "--watch", "--interval", "nan")
    assert code == 2
    one_error_line(err, "--interval must be a finite number, got nan")


@pytest.mark.parametrize("option, value, listed", [("--status", "bogus", "queued, running, finished"),
                                                   ("--defense", "bogus", "plain, advtrain")])
def test_ls_refuses_unknown_filter_values(runs, monkeypatch, capsys, option, value, listed):
    code, out, err = cli(monkeypatch, capsys, "ls", option, value)
    assert code == 2 and out == ""
    one_error_line(err, f"unknown {option} 'bogus'; choose one of: {listed}")
    code, _, err = cli(monkeypatch, capsys, "queue", "ls", "--status", "bogus")
    assert code == 2
    one_error_line(err, "unknown --status 'bogus'; choose one of: queued, running, done, failed, cancelled")


def test_a_worker_without_cpu_slots_is_refused_and_the_queue_kept(runs, monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "queue", "train", "-d", "plain", *TINY[:-2])
    assert code == 0, err
    before = store_snapshot(runs)
    code, _, err = cli(monkeypatch, capsys, "worker", "--once", "--cpu-slots", "0")
    assert code == 2
    one_error_line(err, "--cpu-slots must be between 1 and 1024, got 0")
    assert store_snapshot(runs) == before


def test_a_landscape_grid_is_bounded_by_time_and_by_the_memory_free(runs, monkeypatch, capsys):
    import advtui.options

    before = store_snapshot(runs)
    code, _, err = cli(monkeypatch, capsys, "analyze", "landscape", "a", "--grid", "100000")
    assert code == 2
    one_error_line(err, "--grid must be between 2 and 1001, got 100000")
    monkeypatch.setattr(advtui.options, "available_memory", lambda: 64 * 2**20)  # a machine with 64 MiB free
    code, _, err = cli(monkeypatch, capsys, "analyze", "landscape", "a", "--grid", "1001", "--device", "cpu")
    assert code == 2
    one_error_line(err, "--grid 1001 needs about 48 MiB of memory, more than half of the 64 MiB this machine has free")
    assert store_snapshot(runs) == before


def test_a_usage_error_is_one_line(runs, monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "run", "--epochs", "many")
    assert code == 2
    one_error_line(err, "Invalid value for '--epochs'", "--help")
    code, _, err = cli(monkeypatch, capsys, "ls", "--bogus")
    assert code == 2
    one_error_line(err, "No such option: --bogus")


# == names unique in a runs folder ================================================================
def test_a_second_run_of_the_same_name_gets_a_suffix_whichever_way_it_is_made(runs, monkeypatch, capsys):
    from advtui.core.config import build_config
    from advtui.jobs.queue import queue_train

    for _ in range(2):
        code, out, err = cli(monkeypatch, capsys, "queue", "train", "-d", "plain", "--name", "twin")
        assert code == 0, err
    code, _, err = cli(monkeypatch, capsys, "run", "-d", "plain", "--name", "twin", *TINY)
    assert code == 0, err
    queue_train(Registry(runs), build_config("plain", name="twin"))  # what the dashboard's form calls
    names = sorted(r["name"] for r in Registry(runs).runs())
    assert names == ["a", "b", "twin", "twin-2", "twin-3", "twin-4"]
    code, out, err = cli(monkeypatch, capsys, "show", "twin-3")
    assert code == 0, err


def test_runs_created_at_once_by_several_processes_get_distinct_names(tmp_path):
    root = tmp_path / "runs"
    script = textwrap.dedent(f"""
        import sys
        from advtui.core.config import build_config
        from advtui.store import lifecycle
        from advtui.store.registry import Registry
        registry = Registry({str(root)!r})
        for _ in range(3):
            lifecycle.create_queued(registry, build_config("plain").to_dict())
    """)
    env_path = str(REPO / "src")
    procs = [subprocess.Popen([sys.executable, "-c", script], env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
             for _ in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    names = sorted(r["name"] for r in Registry(root).runs())
    assert len(names) == 12 and len(set(names)) == 12
    assert "plain-mnist-s0" in names and "plain-mnist-s0-12" in names


# == evaluation progress that agrees with itself ====================================================
def test_eval_progress_counts_examples_done_of_the_limit_and_robust_of_done(runs):
    from advtui.evaluation import evaluate_run

    seen = []
    report = evaluate_run(Registry(runs), "a", "natural,pgd-30x2", limit=20, batch_size=8, device="cpu",
                          on_progress=seen.append)
    for index, doc in enumerate(report.results):
        reports = [p for p in seen if p.index == index]
        final = reports[-1]
        assert final.finished and (final.done, final.total, final.robust) == (20, 20, doc["robust"])
        assert final.accuracy == doc["accuracy"] == 100.0 * doc["robust"] / 20
        assert all(p.total == 20 and 0 <= p.robust <= p.done <= 20 for p in reports)
        done = [p.done for p in reports]
        assert done == sorted(done)  # never counted twice: a restart re-attacks, it adds no examples
        assert (reports[-2].done, reports[-2].robust) == (final.done, final.robust)  # the last running report
    pgd = [p for p in seen if p.index == 1 and not p.finished]
    assert {p.pass_index for p in pgd} == {0, 1} and all(p.passes == 2 for p in pgd)
    steps = sorted({p.step for p in pgd if p.step})
    assert steps[0] == 1 and steps[-1] == 30 and all(p.steps == 30 for p in pgd if p.step)  # inside each batch


def test_a_long_attack_says_where_it_is_before_it_ends(runs, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "eval", "a", "-a", "pgd-200", "--limit", "10", "--device", "cpu")
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("[1/1] pgd-200: ")]
    # The examples wrong at x have their verdict (not robust) before the first step.
    assert len(lines) >= 2 and re.fullmatch(r"\[1/1\] pgd-200: (\d+)/10 robust 0/\1 so far, step 1/200", lines[0])
    robust = int(lines[-1].split("robust ")[1].split("/")[0])
    assert lines[-1] == f"[1/1] pgd-200: done, 10/10 robust {robust}/10 = {10.0 * robust:.2f}%"
    row = next(line for line in out.splitlines() if line.strip().startswith("pgd-200 "))
    assert f"{10.0 * robust:.2f}" in row and f"{robust}/10" in row


# == a torch/torchvision pair that does not match ===================================================
def test_a_torchvision_built_for_another_torch_is_one_line_with_the_fix(tmp_path):
    """A torchvision whose compiled operators do not load (what a mismatched pair does at import)
    shadows the installed one: the command stops with one line naming the release to install."""
    import importlib.metadata

    from advtui.engine.vision import matching_torchvision

    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{fake.parent}:{REPO / 'src'}", "OMP_NUM_THREADS": "1",
           "ADVTUI_RUNS": str(tmp_path / "runs")}
    done = subprocess.run([sys.executable, "-m", "advtui", "eval", "somerun"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    wanted = matching_torchvision(torch_version())
    assert lines == [f"error: torchvision {importlib.metadata.version('torchvision')} does not work with torch "
                     f"{torch_version()} (operator torchvision::nms does not exist): pip install "
                     f"'torchvision=={wanted}.*' from the index torch came from (the README's install section "
                     "shows how to check the pair)"]
    assert not (tmp_path / "runs").exists()


def torch_version() -> str:
    import torch

    return torch.__version__


def test_the_torchvision_release_of_each_torch_release():
    from advtui.engine.vision import matching_torchvision

    assert [matching_torchvision(v) for v in ("2.0.1", "2.5.1+cpu", "2.14.1+cu130", "1.13.1")] == [
        "0.15", "0.20", "0.29", None]


# == a rank that hangs after the end of training ====================================================
HANGING_RANK = '''
import os

if os.environ.get("RANK") is not None:  # a rank started by torchrun, not the launcher
    import time

    import advtui.engine.distributed as distributed
    import advtui.engine.train as train

    distributed.FINAL_BARRIER_TIMEOUT_S = 5.0
    if os.environ["RANK"] == "1":
        fit = train.Trainer.fit

        def fit_then_hang(self, *args, **kwargs):
            fit(self, *args, **kwargs)
            time.sleep(3600)

        train.Trainer.fit = fit_then_hang
'''


def test_a_rank_that_hangs_after_training_fails_the_run_and_leaves_no_process(runs_root, tmp_path):
    """Rank 1 of a --nproc 2 run trains to the end, then hangs (injected at its start through
    sitecustomize): the run is recorded failed, with one line saying why, and no process of it
    is left."""
    import psutil
    from test_distributed import TINY as DDP_TINY
    from test_distributed import _in_private_network

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HANGING_RANK)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{hook}:{REPO / 'src'}:{REPO / 'tests'}"}
    start = time.monotonic()
    done = _in_private_network([sys.executable, "-m", "advtui", "run", *DDP_TINY, "--nproc", "2", "--name",
                                f"hang-{tmp_path.name}"], env, timeout=280)
    assert time.monotonic() - start < 240
    assert done.returncode != 0, done.stdout[-2000:] + done.stderr[-2000:]
    (run,) = Registry(runs_root).runs()
    assert run["status"] == "failed"
    assert run["error"].startswith("a rank of the 2 processes did not reach the end of training within 5s")
    assert f"error: run {run['id']} failed: a rank of the 2 processes" in done.stderr
    assert (runs_root / run["id"] / "checkpoints" / "final.pt").exists()  # the weights it trained stay
    left = [p for p in psutil.process_iter(["cmdline"]) if f"hang-{tmp_path.name}" in " ".join(p.info["cmdline"] or [])]
    assert left == []
