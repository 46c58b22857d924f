"""Fault injection: every way a run, the store or a file was found to go wrong, reproduced.

Each case asserts what the user sees (exit code, one line on stderr, no traceback), the run's
status afterwards, and that the store and every other run are byte-for-byte as before where
nothing should have changed. Most cases need no training: one tiny real run (64 MNIST images,
one epoch) is trained once and copied into each test that needs a run with checkpoints.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from advtui.store import lifecycle
from advtui.core.events import EventTail, EventWriter, read_stream
from advtui.store.registry import QUEUE_FILE, REGISTRY_FILE, RUN_FILE, Registry
from store_support import store_snapshot

REPO = Path(__file__).resolve().parents[1]
TINY = ["--train-limit", "64", "--test-limit", "32", "--eval-limit", "32", "--batch-size", "32", "--epochs", "1",
        "--device", "cpu"]


# -- helpers --------------------------------------------------------------------------------------
def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`advtui ARGS` in this process, through the program's own entry point (errors become one
    line there): (exit code, stdout, stderr). An uncaught exception fails the test."""
    from advtui.main import main

    monkeypatch.setattr(sys, "argv", ["advtui", *args])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, *fragments: str) -> str:
    """The one line an error is (a run that started says so first: "run ID (name) on cpu")."""
    lines = [line for line in err.strip().splitlines() if not line.startswith(("run ", "epoch "))]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "\x1b" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def subprocess_env(root: Path, mnist_root: Path) -> dict[str, str]:
    return {**os.environ, "ADVTUI_RUNS": str(root), "ADVTUI_DATA": str(mnist_root), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}


def record(root: Path, run_id: str) -> dict:
    return Registry(root).get_run(run_id)


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def _tiny_runs(tmp_path_factory, mnist_root) -> Path:
    """Two finished tiny runs (a, b) trained once for the module: real checkpoints and streams."""
    from advtui.core.config import build_config
    from advtui.runner import RunPlan, execute_run

    root = tmp_path_factory.mktemp("faults") / "runs"
    torch.set_num_threads(1)
    for name in ("a", "b"):
        config = build_config("plain", name=name, data_root=str(mnist_root), device="cpu", train_limit=64,
                              test_limit=32, eval_limit=32, batch_size=32, epochs=1)
        execute_run(RunPlan(config), root)
    return root


@pytest.fixture
def runs(_tiny_runs, tmp_path, monkeypatch, mnist_root) -> Path:
    """A private copy of the two finished runs, as $ADVTUI_RUNS."""
    root = tmp_path / "runs"
    shutil.copytree(_tiny_runs, root)
    monkeypatch.setenv("ADVTUI_RUNS", str(root))
    monkeypatch.setenv("ADVTUI_DATA", str(mnist_root))
    return root


def ids(root: Path) -> dict[str, str]:
    return {r["name"]: r["id"] for r in Registry(root).runs()}


# == runs left `running` for ever ================================================================
@pytest.mark.parametrize("option, value, message", [
    ("--momentum", "-1", "momentum must be in [0, 1), got -1"),
    ("--weight-decay", "-1", "weight-decay must be 0 or more, got -1"),
])
def test_an_option_torch_rejects_late_is_refused_before_any_record(runs, monkeypatch, capsys, option, value, message):
    before = store_snapshot(runs)
    code, _, err = cli(monkeypatch, capsys, "run", "--defense", "plain", option, value, *TINY)
    assert code == 2
    one_error_line(err, message)
    assert store_snapshot(runs) == before  # no record was created, nothing else changed


def _unshare_works() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt 2>&1 || "
                            "mount -t tmpfs -o size=1m tmpfs \"$(mktemp -d)\""], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"this machine does not let a test mount a tmpfs (unshare -rm): {probe.stderr.strip()[:200]}"
    return None


def test_a_full_disk_ends_the_run_failed_or_says_in_one_line_why_it_could_not(tmp_path, mnist_root):
    """Two full disks on small tmpfs mounts (a user and mount namespace): a checkpoint that does
    not fit ends the run failed with the reason; a disk filled by another process right after
    the run starts makes even the status write fail: one line says so, the record is left as
    it was, and `advtui ls` reports the dead run failed once space is back."""
    why = _unshare_works()
    if why:
        pytest.skip(why)
    out = tmp_path / "out"
    out.mkdir()
    script = textwrap.dedent(f"""
        set -u
        run() {{ {sys.executable} -m advtui "$@"; }}
        A={tmp_path}/a; B={tmp_path}/b; mkdir -p $A $B
        mount -t tmpfs -o size=2m tmpfs $A && mount -t tmpfs -o size=2m tmpfs $B || exit 99
        # 1. The checkpoint (weights and momentum, 2.5 MB) does not fit in 2 MB.
        ( ADVTUI_RUNS=$A run run --defense plain {' '.join(TINY)} >{out}/a.out 2>{out}/a.err; echo $? >{out}/a.rc ) &
        # 2. Another process fills the disk as soon as the run's record exists.
        ( while ! ls $B/*/{RUN_FILE} >/dev/null 2>&1; do sleep 0.01; done; cat /dev/zero >$B/filler 2>/dev/null ) &
        ADVTUI_RUNS=$B run run --defense plain {' '.join(TINY)} >{out}/b.out 2>{out}/b.err; echo $? >{out}/b.rc
        wait  # for case 1 and the filler
        cp -a $B {out}/b-full
        # 3. A command that only writes the store, on a full disk: one line, nothing changed.
        ADVTUI_RUNS=$B run queue train --defense plain >{out}/c.out 2>{out}/c.err; echo $? >{out}/c.rc
        cp -a $A {out}/a-runs
        rm $B/filler
        ADVTUI_RUNS=$B run ls --json >{out}/b-ls.json 2>{out}/b-ls.err
    """)
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=subprocess_env(tmp_path / "unused", mnist_root),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode != 99, proc.stderr

    # 1: failed, with the reason, and one line.
    assert (out / "a.rc").read_text().strip() == "1"
    one_error_line((out / "a.err").read_text(), "failed", "No space left on device")
    (run_a,) = Registry(out / "a-runs").runs()
    assert run_a["status"] == "failed" and "No space left on device" in run_a["error"]
    assert not list((out / "a-runs" / run_a["id"] / "checkpoints").glob("*"))  # no half-written checkpoint

    # 2: the status write failed too: said in one line; the record still says running, as it was.
    assert (out / "b.rc").read_text().strip() == "1"
    one_error_line((out / "b.err").read_text(), "No space left on device", "could not be recorded as failed")
    (stuck,) = Registry(out / "b-full").runs()
    assert stuck["status"] == "running"
    # 3: nothing stored changed.
    assert (out / "c.rc").read_text().strip() == "2"
    one_error_line((out / "c.err").read_text(), "cannot write the registry file", "No space left on device")
    # ...and `ls`, once there is space again, reports the dead run failed.
    listed = json.loads((out / "b-ls.json").read_text())
    assert [(r["id"], r["status"]) for r in listed] == [(stuck["id"], "failed")]
    assert "process vanished" in listed[0]["error"]


def test_kill_9_of_a_foreground_run_is_reported_failed_by_ls_show_kill_and_resume(runs, mnist_root, monkeypatch, capsys):
    before = store_snapshot(runs)
    proc = subprocess.Popen([sys.executable, "-m", "advtui", "run", "--defense", "plain", "--name", "victim",
                             *TINY[:-4], "--epochs", "50", "--device", "cpu"],
                            env=subprocess_env(runs, mnist_root), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and "victim" not in ids(runs):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    victim = ids(runs)["victim"]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert record(runs, victim)["status"] == "running"  # what SIGKILL leaves: nobody wrote the end

    code, out, err = cli(monkeypatch, capsys, "kill", victim)
    assert code == 2
    one_error_line(err, f"run {victim} is not running (status failed)")
    after = record(runs, victim)
    assert after["status"] == "failed" and after["error"].startswith("process vanished (pid ")
    code, out, _ = cli(monkeypatch, capsys, "ls")
    assert code == 0 and "running" not in out
    code, out, _ = cli(monkeypatch, capsys, "show", victim)
    assert code == 0 and "failed" in out and "process vanished" in out
    # The other runs were not touched.
    now = store_snapshot(runs)
    assert {k: v for k, v in now.items() if not k.startswith(victim)} == before
    # A dead run can be queued again like any failed one.
    code, out, err = cli(monkeypatch, capsys, "resume", victim)
    assert code == 0, err
    assert record(runs, victim)["status"] == "queued"


def _wrong_model_checkpoint(root: Path, run_id: str) -> None:
    """Replace a run's last.pt with one holding another model's weights (a CIFAR-10 SmallCNN)."""
    from advtui.engine.checkpoint import load_checkpoint, save_checkpoint
    from advtui.engine.models import build_model

    path = root / run_id / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    state["model"] = build_model("smallcnn", "cifar10").state_dict()
    save_checkpoint(path, state)


def test_a_failed_resume_leaves_a_finished_run_finished(runs, monkeypatch, capsys):
    run_a = ids(runs)["a"]
    _wrong_model_checkpoint(runs, run_a)
    before = store_snapshot(runs)
    code, _, err = cli(monkeypatch, capsys, "run", "--resume", run_a, "--epochs", "2")
    assert code == 2
    one_error_line(err, "does not fit the run's smallcnn on mnist: missing", "unexpected")
    assert record(runs, run_a)["status"] == "finished"
    assert store_snapshot(runs) == before


def test_a_resume_that_fails_after_the_start_puts_the_record_back(runs, monkeypatch, capsys):
    """The checkpoint fits the model but not the optimizer (a parameter group too many): the
    failure comes after the record said running; it goes back to finished, as it was."""
    from advtui.engine.checkpoint import load_checkpoint, save_checkpoint

    run_a = ids(runs)["a"]
    path = runs / run_a / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    groups = state["optimizer"]["param_groups"]
    state["optimizer"]["param_groups"] = groups + [dict(groups[0], params=[999])]
    save_checkpoint(path, state)
    before = record(runs, run_a)
    code, _, err = cli(monkeypatch, capsys, "run", "--resume", run_a, "--epochs", "2")
    assert code == 1
    one_error_line(err, f"cannot resume run {run_a}", f"run {run_a} is finished as before")
    after = record(runs, run_a)
    assert after == before


# == silent wrong results ========================================================================
@pytest.mark.parametrize("option, value, message", [
    ("--lr", "inf", "lr must be a finite number, got inf"),
    ("--momentum", "nan", "momentum must be a finite number, got nan"),
    ("--eps", "nan", "eps must be a finite number"),
    ("--beta", "inf", "beta must be a finite number"),
    ("--weight-decay", "inf", "weight-decay must be a finite number"),
    ("--seed", "-1", "seed must be at least 0"),
    ("--epochs", "0", "epochs must be between 1 and 100000, got 0"),
    ("--inner-steps", "0", "inner-steps must be between 1 and 100000"),
    ("--eval-limit", "0", "eval-limit must be at least 1"),
])
def test_non_finite_and_out_of_range_values_are_refused_up_front(runs, monkeypatch, capsys, option, value, message):
    before = store_snapshot(runs)
    code, _, err = cli(monkeypatch, capsys, "run", "--defense", "trades", *TINY, option, value)
    assert code == 2
    one_error_line(err, message)
    assert store_snapshot(runs) == before


def test_a_limit_above_the_split_is_a_warning_and_the_real_size_is_recorded(runs, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "run", "--defense", "plain", "--name", "big", *TINY[2:],
                         "--train-limit", "64", "--test-limit", "100000")
    assert code == 0, err
    assert "warning: --test-limit 100000 is more than the 10000 test images of mnist: using all 10000" in err
    assert record(runs, ids(runs)["big"])["config"]["test_limit"] == 10000
    from advtui.core.config import build_config
    from advtui.runner import _real_sizes

    warned = []
    config = _real_sizes(build_config("plain", train_limit=100000), 60000, 10000, warned.append)
    assert config.train_limit == 60000 and warned == [
        "--train-limit 100000 is more than the 60000 training images of mnist: using all 60000 (recorded as 60000)"]


def test_eval_refuses_a_batch_size_of_zero(runs, monkeypatch, capsys):
    before = store_snapshot(runs)
    code, _, err = cli(monkeypatch, capsys, "eval", ids(runs)["a"], "--batch-size", "0")
    assert code == 2
    one_error_line(err, "--batch-size must be at least 1, got 0")
    assert store_snapshot(runs) == before


# == data lost ===================================================================================
@pytest.mark.parametrize("content, what", [
    (b"{}", "holds an empty object"),
    (b"[]", "not an object of tables"),
    (b'{"runs": {}}', "has no _meta table"),
    (b"\x89\xfe\x00garbage\xff" * 20, "is corrupt"),
])
def test_a_registry_file_that_is_not_a_registry_is_reported_and_never_overwritten(runs, monkeypatch, capsys,
                                                                                   content, what):
    (runs / REGISTRY_FILE).write_bytes(content)
    bak = runs / (REGISTRY_FILE + ".bak")
    before = store_snapshot(runs)
    bak_before = bak.read_bytes() if bak.exists() else None
    for args in (["ls"], ["show", "a"], ["queue", "train", "--defense", "plain"],
                 ["run", "--defense", "plain", *TINY]):
        code, _, err = cli(monkeypatch, capsys, *args)
        assert code == 2, args
        one_error_line(err, f"the registry file {runs / REGISTRY_FILE}", what, "left untouched")
    assert store_snapshot(runs) == before
    assert (bak.read_bytes() if bak.exists() else None) == bak_before
    assert any(what in line for line in Registry(runs).store_problems())  # what the dashboard shows


def test_an_earlier_versions_registry_that_is_not_one_is_not_migrated(tmp_path, monkeypatch, capsys):
    """``advtui.json`` (the single-file registry of earlier versions) replaced by ``{}``: taken
    as an empty registry it would be migrated to nothing and moved aside."""
    from advtui.store.registry import LEGACY_FILE

    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setenv("ADVTUI_RUNS", str(root))
    (root / LEGACY_FILE).write_bytes(b"{}")
    (root / (LEGACY_FILE + ".bak")).write_bytes(b'{"_meta": {"1": {"schema": 1}}, "runs": {}}')
    code, _, err = cli(monkeypatch, capsys, "ls")
    assert code == 2
    one_error_line(err, str(root / LEGACY_FILE), "holds an empty object", "the last good copy is")
    assert sorted(p.name for p in root.iterdir()) == [LEGACY_FILE, LEGACY_FILE + ".bak", LEGACY_FILE + ".lock"]
    assert (root / LEGACY_FILE).read_bytes() == b"{}"


@pytest.mark.parametrize("content", [b"{}", b"[]", b'{"jobs": {}, "other": {}}', b"\xff\xfe"])
def test_a_damaged_run_file_hides_that_run_only(runs, monkeypatch, capsys, content):
    names = ids(runs)
    (runs / names["a"] / RUN_FILE).write_bytes(content)
    before = store_snapshot(runs)
    code, out, err = cli(monkeypatch, capsys, "ls")
    assert code == 0 and names["b"] in out and names["a"] not in out
    assert err.startswith("warning: the registry file") and len(err.strip().splitlines()) == 1
    code, _, err = cli(monkeypatch, capsys, "show", names["a"])
    assert code == 2
    one_error_line(err, str(runs / names["a"] / RUN_FILE))
    assert store_snapshot(runs) == before


@pytest.mark.parametrize("field, value, what", [
    ("config", "x", "config is str, not dict"), ("metrics", [1], "metrics is list, not dict"),
    ("checkpoints", "y", "checkpoints is str, not dict"), ("status", "sleeping", "status 'sleeping' is none of"),
])
def test_a_run_record_edited_into_another_shape_is_a_damaged_file(runs, monkeypatch, capsys, field, value, what):
    names = ids(runs)
    path = runs / names["a"] / RUN_FILE
    data = json.loads(path.read_bytes())
    data["runs"]["1"][field] = value
    path.write_text(json.dumps(data))
    before = store_snapshot(runs)
    code, out, err = cli(monkeypatch, capsys, "ls")
    assert code == 0 and names["b"] in out and names["a"] not in out and what in err
    code, _, err = cli(monkeypatch, capsys, "show", names["a"])
    assert code == 2
    one_error_line(err, str(path), what)
    assert store_snapshot(runs) == before


def test_a_damaged_queue_file_is_reported_and_kept(runs, monkeypatch, capsys):
    (runs / QUEUE_FILE).write_bytes(b"{}")
    before = store_snapshot(runs)
    code, _, err = cli(monkeypatch, capsys, "queue", "train", "--defense", "plain")
    assert code == 2
    one_error_line(err, str(runs / QUEUE_FILE), "holds an empty object")
    assert store_snapshot(runs) == before and not (runs / (QUEUE_FILE + ".bak")).exists()


def test_a_torn_last_event_line_is_mended_before_the_resumed_run_writes(runs, monkeypatch, capsys):
    run_a = ids(runs)["a"]
    events = runs / run_a / "events.jsonl"
    with open(events, "ab") as f:
        f.write(b'{"kind":"step","time":1.0,"epo')  # a kill in the middle of a write
    code, _, err = cli(monkeypatch, capsys, "run", "--resume", run_a, "--epochs", "2")
    assert code == 0, err
    stream = read_stream(events)
    assert stream.damaged == 1  # the torn line alone
    starts = [e for e in stream.events if e["kind"] == "start"]
    assert len(starts) == 2 and starts[1]["resumed"] is True
    assert record(runs, run_a)["status"] == "finished" and record(runs, run_a)["epoch"] == 2


# == tracebacks instead of one line =============================================================
def test_damaged_event_lines_are_skipped_and_counted_in_show(runs, monkeypatch, capsys):
    run_a = ids(runs)["a"]
    with open(runs / run_a / "events.jsonl", "ab") as f:
        f.write(b"\x00\xff\xfe binary\n[1,2,3]\n" + json.dumps({"kind": "inner", "time": 1.0}).encode() + b"\n")
    code, out, err = cli(monkeypatch, capsys, "show", run_a)
    assert code == 0 and "3 damaged lines skipped" in out
    assert err.strip() == f"warning: {runs / run_a / 'events.jsonl'}: 3 damaged lines skipped"
    tail = EventTail(runs / run_a / "events.jsonl")
    assert [e["kind"] for e in tail.read_new()][-1] == "end" and tail.damaged == 3  # the dashboard's reader


@pytest.mark.parametrize("content, fragment", [
    (b"just some text\nnot a checkpoint\n", "not a file torch.save wrote"),
    (None, "holds objects other than tensors"),  # a pickle that would run code
])
def test_checkpoint_load_errors_are_one_plain_line(runs, monkeypatch, capsys, content, fragment):
    run_a = ids(runs)["a"]
    path = runs / run_a / "checkpoints" / "final.pt"
    if content is None:
        torch.save({"model": _RunsCode()}, path)
    else:
        path.write_bytes(content)
    before = store_snapshot(runs)
    for args in (["eval", run_a, "--attacks", "natural"], ["run", "--defense", "plain", "--init-from", run_a, *TINY]):
        code, _, err = cli(monkeypatch, capsys, *args)
        assert code == 2, args
        one_error_line(err, str(path), fragment)
    assert store_snapshot(runs) == before
    assert not Path("/tmp/advtui-faults-pwned").exists()


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/advtui-faults-pwned",))


def test_a_checkpoint_option_naming_a_system_file_is_one_line(runs, monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "eval", ids(runs)["a"], "--checkpoint", "/etc/passwd")
    assert code == 2
    one_error_line(err, "/etc/passwd")


def test_a_runs_folder_that_cannot_be_written_is_one_line(tmp_path, mnist_root):
    shared = Path(tempfile.mkdtemp(prefix="advtui-ro-"))
    try:
        root = shared / "runs"
        Registry(root).create_run({"name": "existing", "status": "finished"})
        before = store_snapshot(root)
        for folder in (shared, root):
            folder.chmod(0o755)
        command = [sys.executable, "-m", "advtui", "queue", "train", "--defense", "plain"]
        if os.geteuid() == 0:  # root writes anywhere: run the command as nobody
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv to drop to an unprivileged user")
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        else:
            root.chmod(0o555)
        proc = subprocess.run(command, env=subprocess_env(root, mnist_root), capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2
        one_error_line(proc.stderr, "cannot write the registry file", "Permission denied")
        assert store_snapshot(root) == before
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_kill_of_an_ambiguous_prefix_says_it_matches_several(tmp_path, monkeypatch, capsys):
    root = tmp_path / "runs"
    monkeypatch.setenv("ADVTUI_RUNS", str(root))
    registry = Registry(root)
    for run_id in ("5a0001", "5a0002", "5a0003"):
        registry.upsert("runs", {"id": run_id}, {"name": run_id, "status": "finished"})
    code, _, err = cli(monkeypatch, capsys, "kill", "5")
    assert code == 2
    one_error_line(err, "'5' matches several runs (", "5a0001", "5a0002", "5a0003", "give the full id")


def test_random_bytes_in_the_registry_are_a_message_for_the_dashboard(runs):
    (runs / REGISTRY_FILE).write_bytes(os.urandom(512))
    problems = Registry(runs).store_problems()
    assert len(problems) == 1 and "is corrupt" in problems[0] and "\n" not in problems[0]


# == trust boundaries ============================================================================
def test_the_cifar10_reader_reads_batches_and_runs_no_code(tmp_path):
    from advtui.engine.data import CIFAR_FOLDER, load_split
    from advtui.core.errors import DataMissingError

    folder = tmp_path / CIFAR_FOLDER
    folder.mkdir()
    rng = np.random.default_rng(0)
    batch = {"batch_label": "testing batch 1 of 1", "labels": [i % 10 for i in range(20)],
             "data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "filenames": [b"x.png"] * 20}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    split = load_split("cifar10", tmp_path, train=False, download=False)
    assert split.images.shape == (20, 3, 32, 32) and split.labels.tolist() == batch["labels"]
    assert np.array_equal(split.images.reshape(20, -1).numpy(), batch["data"])

    marker = tmp_path / "ran"
    (folder / "test_batch").write_bytes(pickle.dumps({"data": _Touches(str(marker)), "labels": []}))
    with pytest.raises(DataMissingError, match="refused to load posix.system"):
        load_split("cifar10", tmp_path, train=False, download=False)
    assert not marker.exists()


class _Touches:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("stored", ["../../elsewhere.pt", "/etc/passwd", "checkpoints/../../b/checkpoints/final.pt"])
def test_a_checkpoint_path_from_the_registry_stays_inside_the_run_folder(runs, monkeypatch, capsys, stored):
    names = ids(runs)
    registry = Registry(runs)
    registry.update_run(names["a"], checkpoints={"last": stored, "final": stored})
    shutil.copy(runs / names["b"] / "checkpoints" / "final.pt", runs.parent / "elsewhere.pt")
    before = store_snapshot(runs)
    for args in (["eval", names["a"], "--attacks", "natural"], ["run", "--resume", names["a"], "--epochs", "2"]):
        code, _, err = cli(monkeypatch, capsys, *args)
        assert code == 2, args
        one_error_line(err, "leads outside its folder", "refused")
    assert store_snapshot(runs) == before


def test_created_files_follow_the_umask(runs, tmp_path):
    from advtui.core.atomic import atomic_write_json
    from advtui.engine.checkpoint import load_checkpoint, save_checkpoint

    old = os.umask(0o002)
    try:
        root = tmp_path / "shared-runs"
        registry = Registry(root)
        made = registry.create_run({"name": "x", "status": "finished"})
        registry.update_run(made["id"], epoch=1)  # a second write keeps the first as .bak
        checkpoint = save_checkpoint(root / made["id"] / "checkpoints" / "last.pt",
                                     load_checkpoint(runs / ids(runs)["a"] / "checkpoints" / "last.pt"))
        atomic_write_json(tmp_path / "legacy.json", {})
        for path in (root / REGISTRY_FILE, root / made["id"] / RUN_FILE, root / made["id"] / (RUN_FILE + ".bak"),
                     checkpoint, tmp_path / "legacy.json"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o664, path
    finally:
        os.umask(old)


# == reading, for the dashboard ==================================================================
def test_settle_vanished_marks_a_dead_running_run_failed_once(tmp_path):
    registry = Registry(tmp_path / "runs")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    made = registry.create_run({"name": "ghost", "status": "running", "pid": int(dead.stdout), "pid_start_time": 1.0})
    settled = lifecycle.settle_vanished(registry, registry.get_run(made["id"]))
    assert settled["status"] == "failed" and settled["error"].startswith("process vanished")
    assert registry.get_run(made["id"]) == settled
    alive = registry.create_run({"name": "me", **lifecycle._running_fields()})
    assert lifecycle.settle_vanished(registry, alive)["status"] == "running"


def test_an_event_writer_on_a_torn_stream_starts_a_new_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"kind":"step","time":1.0}\n{"kind":"st')
    with EventWriter(path) as writer:
        writer.emit("start", resumed=True)
    stream = read_stream(path)
    assert [e["kind"] for e in stream.events] == ["step", "start"] and stream.damaged == 1
    with EventWriter(path) as writer:  # a whole last line: nothing added
        writer.emit("end", status="finished")
    assert path.read_bytes().count(b"\n\n") == 0
