"""Fault injection on the run store and the run folders: a second migration, damaged field
types, a damaged record in front of the queue, planted symlinks, a pid without its start time,
and what a kill in the middle of a checkpoint leaves behind.

Each case asserts what the user sees (exit code, one line), the status afterwards, and that
stored files are byte-for-byte as before where nothing should have changed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from store_support import legacy_jobs_root, store_snapshot
from test_faults import _tiny_runs, cli, ids, one_error_line  # noqa: F401 - _tiny_runs is a fixture

from advtui.store.registry import (
    ARCHIVE_DIR,
    JOBS,
    LEGACY_FILE,
    QUEUE_FILE,
    REGISTRY_FILE,
    RESULTS,
    RUN_FILE,
    Registry,
)

LEGACY = Path(__file__).parent / "data" / "advtui-v1.json"


def every_file(root: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """The bytes of every plain file under ``root`` (locks aside), by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and not p.name.endswith(".lock")
            and not str(p.relative_to(root)).startswith(skip)}


# == a second migration ============================================================================
def test_a_legacy_file_beside_a_used_store_without_its_registry_file_changes_no_byte_of_it(tmp_path):
    """The store was migrated and used (results with their .bak, a job queued, a run changed);
    then registry.json was lost and the single-file registry came back. The migration that runs
    again keeps every existing file byte for byte and writes only what is missing."""
    root = tmp_path / "runs"
    root.mkdir()
    shutil.copy(LEGACY, root / LEGACY_FILE)
    registry = Registry(root)
    runs = registry.runs()  # the first migration
    first, second, third = sorted(r["id"] for r in runs)
    for value in (0.5, 0.25):  # two writes: the run file and its .bak both hold results now
        registry.insert(RESULTS, {"run_id": first, "attack": "pgd-10", "robust_acc": value})
    registry.update_run(second, status="killed", error="stopped by hand")
    registry.insert(JOBS, {"id": "jabcdef", "kind": "train", "run_id": second, "status": "queued", "priority": 0,
                           "created": time.time()})
    shutil.rmtree(root / third)  # a run the store lost: the legacy file still has it
    for lost in (REGISTRY_FILE, REGISTRY_FILE + ".bak"):
        (root / lost).unlink(missing_ok=True)
    os.replace(root / f"{LEGACY_FILE}.migrated", root / LEGACY_FILE)
    before = every_file(root, skip=(LEGACY_FILE,))
    assert any(k.endswith(RUN_FILE + ".bak") for k in before) and QUEUE_FILE in before

    again = Registry(root)
    listed = {r["id"]: r for r in again.runs()}
    after = every_file(root, skip=(LEGACY_FILE, REGISTRY_FILE, third))
    assert after == before  # not one byte of the files that existed changed, .bak files included
    assert listed[second]["status"] == "killed"
    assert [r["robust_acc"] for r in again.search(RESULTS, run_id=first, attack="pgd-10")] == [0.5, 0.25]
    assert "jabcdef" in {j["id"] for j in again.all(JOBS)}
    assert third in listed  # what was missing came back from the legacy file
    (meta,) = json.loads((root / REGISTRY_FILE).read_text())["_meta"].values()
    assert sorted(meta["migrated"]["kept_newer"]) == sorted([f"{first}/{RUN_FILE}", f"{second}/{RUN_FILE}",
                                                             QUEUE_FILE])
    assert not (root / LEGACY_FILE).exists() and (root / f"{LEGACY_FILE}.migrated").exists()


def test_a_migration_interrupted_before_the_queue_finishes_the_archive_without_touching_its_files(tmp_path,
                                                                                                  monkeypatch):
    import advtui.store.archive as store

    monkeypatch.setattr(store, "ARCHIVE_CHUNK", 2)
    root = tmp_path / "runs"
    jobs = legacy_jobs_root(root, 7, ended=5)
    Registry(root).runs()
    # as if the first migration died after its first archive file
    for name in (REGISTRY_FILE, QUEUE_FILE, f"{ARCHIVE_DIR}/00000002.json", f"{ARCHIVE_DIR}/00000003.json"):
        os.unlink(root / name)
    os.replace(root / f"{LEGACY_FILE}.migrated", root / LEGACY_FILE)
    first_chunk = (root / ARCHIVE_DIR / "00000001.json").read_bytes()
    registry = Registry(root)
    assert sorted(j["id"] for j in registry.all(JOBS)) == sorted(j["id"] for j in jobs.values())
    assert (root / ARCHIVE_DIR / "00000001.json").read_bytes() == first_chunk
    assert len(registry.all(JOBS)) == 7  # no job twice


# == damaged field types: one record hidden with one line ==========================================
@pytest.fixture
def runs(_tiny_runs, tmp_path, monkeypatch, mnist_root) -> Path:  # noqa: F811 - the fixture imported above
    """A private copy of two finished tiny runs (a, b), as $ADVTUI_RUNS."""
    root = tmp_path / "runs"
    shutil.copytree(_tiny_runs, root)
    monkeypatch.setenv("ADVTUI_RUNS", str(root))
    monkeypatch.setenv("ADVTUI_DATA", str(mnist_root))
    return root


def edit_run(root: Path, run_id: str, change) -> Path:
    path = root / run_id / RUN_FILE
    data = json.loads(path.read_bytes())
    change(data["runs"]["1"])
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("field, value, what", [
    ("created", "yesterday", "created is str, not a number"),
    ("pid", "1234", "pid is str, not int"),
    ("started", [1], "started is list, not a number"),
    ("epoch", True, "epoch is bool, not int"),
    ("checkpoints", {"final": 3}, "final checkpoint is int, not a path"),
])
def test_a_run_field_of_the_wrong_type_hides_that_run_with_one_line(runs, monkeypatch, capsys, field, value, what):
    names = ids(runs)
    path = edit_run(runs, names["a"], lambda doc: doc.__setitem__(field, value))
    before = store_snapshot(runs)
    code, out, err = cli(monkeypatch, capsys, "ls")
    assert code == 0 and names["b"] in out and names["a"] not in out
    assert err.count("\n") == 1 and err.startswith(f"warning: the registry file {path}") and what in err
    code, _, err = cli(monkeypatch, capsys, "show", names["a"])
    assert code == 2
    one_error_line(err, str(path), what)
    assert store_snapshot(runs) == before


@pytest.mark.parametrize("change, what", [
    (lambda doc: doc.pop("config"), "has no recorded config to start from"),
    (lambda doc: doc["config"].__setitem__("eps", "big"), "recorded config is damaged (eps must be a number, got 'big')"),
    (lambda doc: doc["config"].__setitem__("epochs", "3"), "recorded config is damaged (epochs must be an integer"),
])
def test_a_run_whose_config_is_lost_or_damaged_is_not_resumed_and_nothing_changes(runs, monkeypatch, capsys,
                                                                                   change, what):
    names = ids(runs)
    edit_run(runs, names["a"], change)
    before = store_snapshot(runs)
    for args in (["resume", names["a"], "--epochs", "2"], ["run", "--resume", names["a"], "--epochs", "2"]):
        code, _, err = cli(monkeypatch, capsys, *args)
        assert code == 2, args
        one_error_line(err, f"run {names['a']}", what)
    assert store_snapshot(runs) == before  # no job queued, the record as it was
    assert Registry(runs).get_run(names["a"])["status"] == "finished"


def add_jobs(root: Path, *jobs: dict) -> None:
    """Jobs written into queue.json by hand (as an editor, or another program, would)."""
    path = root / QUEUE_FILE
    data = json.loads(path.read_bytes()) if path.exists() else {"jobs": {}}
    for job in jobs:
        data["jobs"][str(len(data["jobs"]) + 1)] = {"status": "queued", "priority": 0, "created": time.time(),
                                                    "needs": "cpu", "depends_on": [], **job}
    path.write_text(json.dumps(data))


BAD_JOBS = [
    ({"id": "jbad001", "kind": "eval", "priority": "high"}, "Expected `int | null`, got `str` - at `$.priority`"),
    ({"id": "jbad002", "kind": "eval", "eval_options": {"limit": 8, "bogus": 1}},
     "Object contains unknown field `bogus` - at `$.eval_options`"),
    ({"id": "jbad003", "kind": "eval", "attacks": "natural"}, "Expected `array | null`, got `str` - at `$.attacks`"),
]


def test_damaged_jobs_are_hidden_with_one_line_each_and_the_worker_runs_the_others(runs, monkeypatch, capsys):
    names = ids(runs)
    code, out, err = cli(monkeypatch, capsys, "queue", "eval", names["b"], "--attacks", "natural", "--limit", "16")
    assert code == 0, err
    good = out.split("job ")[1].split()[0].strip("():,")
    add_jobs(runs, *[{**job, "run_id": names["a"]} for job, _ in BAD_JOBS])
    bad_docs = {d["id"]: d for d in json.loads((runs / QUEUE_FILE).read_bytes())["jobs"].values()
                if d["id"].startswith("jbad")}

    code, out, err = cli(monkeypatch, capsys, "queue", "ls")
    assert code == 0 and good in out and "jbad" not in out
    lines = err.strip().splitlines()
    assert len(lines) == len(BAD_JOBS)
    for line, (job, what) in zip(lines, BAD_JOBS):
        assert line.startswith(f"warning: the registry file {runs / QUEUE_FILE} has a damaged job {job['id']}")
        assert what in line and "hidden" in line

    code, out, err = cli(monkeypatch, capsys, "worker", "--once", "--cpu-slots", "1", "--poll", "0.2")
    assert code == 0, err
    assert "Traceback" not in out + err and out.count("skipped: ") == len(BAD_JOBS)
    registry = Registry(runs)
    assert [j["status"] for j in registry.all(JOBS) if j["id"] == good] == ["done"]
    kept = {d["id"]: d for d in json.loads((runs / QUEUE_FILE).read_bytes())["jobs"].values()
            if d["id"].startswith("jbad")}
    assert kept == bad_docs  # kept as they were, for a person to mend
    assert registry.get_run(names["a"])["status"] == "finished"


def test_a_damaged_run_file_fails_its_own_jobs_only_and_the_worker_runs_the_rest(runs, monkeypatch, capsys):
    names = ids(runs)
    for name in ("a", "b"):
        code, _, err = cli(monkeypatch, capsys, "queue", "eval", names[name], "--attacks", "natural", "--limit", "16")
        assert code == 0, err
    path = edit_run(runs, names["a"], lambda doc: doc.__setitem__("created", "yesterday"))
    damaged_bytes = path.read_bytes()
    code, out, err = cli(monkeypatch, capsys, "worker", "--once", "--poll", "0.2")
    assert code == 0, err
    assert "Traceback" not in out + err
    jobs = {j["run_id"]: j for j in Registry(runs).all(JOBS)}
    assert jobs[names["b"]]["status"] == "done"
    assert jobs[names["a"]]["status"] == "failed"
    assert jobs[names["a"]]["error"].startswith(f"the registry file {path} has a run whose created is str")
    assert f"`advtui resume {names['a']}`" in jobs[names["a"]]["error"] and "\n" not in jobs[names["a"]]["error"]
    assert path.read_bytes() == damaged_bytes  # never overwritten


def test_a_reproduction_plan_with_a_damaged_field_is_left_out_of_the_report_with_one_line(runs, monkeypatch, capsys):
    registry = Registry(runs)
    registry.insert("reproductions", {"table": "table3", "scale": "smoke", "rows": {"plain": "abc"}, "columns": [],
                                      "eval_options": {}})
    before = store_snapshot(runs)
    code, _, err = cli(monkeypatch, capsys, "report")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in err
    assert lines[0].startswith(f"warning: the registry file {runs / REGISTRY_FILE} has a damaged plan table3")
    assert "Expected `array`, got `str` - at `$.rows[...]`" in lines[0]
    assert lines[1].startswith("error: no reproduction recorded in")
    assert store_snapshot(runs) == before


def test_an_earlier_versions_registry_with_a_schema_of_the_wrong_type_is_one_line(tmp_path, monkeypatch, capsys):
    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setenv("ADVTUI_RUNS", str(root))
    (root / LEGACY_FILE).write_text(json.dumps({"_meta": {"1": {"schema": "1"}}, "runs": {}}))
    before = every_file(root)
    for args in (["ls"], ["queue", "ls"], ["queue", "train", "--defense", "plain"]):
        code, _, err = cli(monkeypatch, capsys, *args)
        assert code == 2, args
        one_error_line(err, str(root / LEGACY_FILE), "has a schema that is str, not int", "left untouched")
    assert every_file(root) == before and not (root / REGISTRY_FILE).exists()


def test_the_store_knows_every_eval_option_the_queue_passes_on():
    from advtui.jobs.queue import EVAL_OPTION_FLAGS
    from advtui.store.schema import EVAL_OPTION_KEYS

    assert set(EVAL_OPTION_KEYS) == set(EVAL_OPTION_FLAGS)


# == a run folder, or a file in it, that is a symbolic link ========================================
def plant_outside(tmp_path: Path, content: bytes = b"someone else's file\n") -> Path:
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    victim = outside / "victim"
    victim.write_bytes(content)
    return victim


def test_a_run_folder_linked_out_of_the_runs_folder_is_hidden_and_never_written(runs, tmp_path, monkeypatch, capsys):
    names = ids(runs)
    code, _, err = cli(monkeypatch, capsys, "queue", "eval", names["a"], "--attacks", "natural", "--limit", "16")
    assert code == 0, err
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(runs / names["a"], outside / names["a"])
    os.symlink(outside / names["a"], runs / names["a"])
    outside_before, before = every_file(outside), every_file(runs)
    names_outside = sorted(p.name for p in outside.rglob("*"))
    what = f"the run folder {runs / names['a']} is a symbolic link (to {outside / names['a']})"

    code, out, err = cli(monkeypatch, capsys, "ls")
    assert code == 0 and names["b"] in out and names["a"] not in out
    assert err.count("\n") == 1 and err.startswith(f"warning: {what}")
    for args in (["show", names["a"]], ["resume", names["a"], "--epochs", "2"], ["kill", names["a"]],
                 ["run", "--resume", names["a"], "--epochs", "2"], ["eval", names["a"], "--attacks", "natural"],
                 ["queue", "eval", names["a"], "--attacks", "natural"]):
        code, _, err = cli(monkeypatch, capsys, *args)
        assert code == 2, args
        one_error_line(err, what, "nothing is written through it")
    code, out, err = cli(monkeypatch, capsys, "worker", "--once", "--poll", "0.2")
    assert code == 0 and "Traceback" not in out + err
    (job,) = Registry(runs).all(JOBS)
    assert job["status"] == "failed" and job["error"].startswith(what)
    assert every_file(outside) == outside_before and sorted(p.name for p in outside.rglob("*")) == names_outside
    assert every_file(runs, skip=(QUEUE_FILE,)) == {k: v for k, v in before.items() if not k.startswith(QUEUE_FILE)}


@pytest.mark.parametrize("planted, what", [
    ("checkpoints/final.pt", "is a symbolic link: a run's files are never written or read through a link"),
    ("events.jsonl", "is a symbolic link: a run's files are never written or read through a link"),
    ("log.txt", "is a symbolic link: a run's files are never written or read through a link"),
    ("checkpoints", "last checkpoint path 'checkpoints/last.pt' leads outside its folder"),  # its read is refused first
])
def test_a_resume_over_a_planted_link_is_refused_before_anything_is_written(runs, tmp_path, monkeypatch, capsys,
                                                                            planted, what):
    names = ids(runs)
    victim = plant_outside(tmp_path)
    link = runs / names["a"] / planted
    if link.is_dir():
        shutil.rmtree(link)
    else:
        link.unlink(missing_ok=True)
    os.symlink(victim.parent if planted == "checkpoints" else victim, link)
    before = store_snapshot(runs)
    code, _, err = cli(monkeypatch, capsys, "run", "--resume", names["a"], "--epochs", "2")
    assert code == 2
    one_error_line(err, what)
    assert victim.read_bytes() == b"someone else's file\n" and sorted(p.name for p in victim.parent.iterdir()) == [
        "victim"]
    assert store_snapshot(runs) == before and Registry(runs).get_run(names["a"])["status"] == "finished"


def test_eval_over_a_linked_event_stream_is_refused_and_writes_nothing(runs, tmp_path, monkeypatch, capsys):
    names = ids(runs)
    victim = plant_outside(tmp_path)
    events = runs / names["a"] / "events.jsonl"
    events.unlink()
    os.symlink(victim, events)
    before = store_snapshot(runs)
    code, _, err = cli(monkeypatch, capsys, "eval", names["a"], "--attacks", "natural", "--limit", "16")
    assert code == 2
    one_error_line(err, f"{events} is a symbolic link")
    assert victim.read_bytes() == b"someone else's file\n"
    assert store_snapshot(runs) == before


def test_a_job_whose_log_is_a_planted_link_fails_with_one_line_and_the_outside_file_is_untouched(runs, tmp_path,
                                                                                                monkeypatch, capsys):
    names = ids(runs)
    code, out, err = cli(monkeypatch, capsys, "queue", "eval", names["b"], "--attacks", "natural", "--limit", "16")
    assert code == 0, err
    (job,) = Registry(runs).all(JOBS)
    victim = plant_outside(tmp_path)
    os.symlink(victim, runs / names["b"] / f"eval-{job['id']}.log")
    code, out, err = cli(monkeypatch, capsys, "worker", "--once", "--poll", "0.2")
    assert code == 0 and "Traceback" not in out + err
    (job,) = Registry(runs).all(JOBS)
    assert job["status"] == "failed" and job["error"].startswith(
        f"could not start {sys.executable}: {runs / names['b'] / ('eval-' + job['id'] + '.log')} is a symbolic link: "
        "it is never written or read through")
    assert victim.read_bytes() == b"someone else's file\n"


def test_the_final_checkpoint_copy_replaces_a_link_planted_meanwhile_and_never_writes_through_it(tmp_path):
    from advtui.core.atomic import atomic_copy

    victim = plant_outside(tmp_path)
    source, target = tmp_path / "last.pt", tmp_path / "final.pt"
    source.write_bytes(b"weights" * 1000)
    os.symlink(victim, target)
    atomic_copy(source, target)
    assert not target.is_symlink() and target.read_bytes() == b"weights" * 1000
    assert victim.read_bytes() == b"someone else's file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.pt", "last.pt", "outside"]  # no temporary left


def test_readers_of_a_stream_or_a_log_do_not_follow_a_planted_link(tmp_path):
    from advtui.core.events import read_stream
    from advtui.jobs.launcher import log_tail

    victim = plant_outside(tmp_path, b'{"kind":"epoch","time":1.0,"epoch":1}\nsecret line\n')
    for name in ("events.jsonl", "log.txt"):
        os.symlink(victim, tmp_path / name)
    assert read_stream(tmp_path / "events.jsonl").events == []  # the dashboard's and show's reader
    assert log_tail(tmp_path / "log.txt") == ""  # what a failed job's record quotes
    (tmp_path / "real.log").write_bytes(b"own line\n")
    assert log_tail(tmp_path / "real.log") == "own line"


# == a kill that could reach another process ======================================================
def test_kill_never_signals_a_pid_recorded_without_its_start_time(runs, monkeypatch, capsys):
    import socket

    names = ids(runs)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        registry = Registry(runs)
        registry.update_run(names["a"], status="running", pid=sleeper.pid, pid_start_time=None,
                            host=socket.gethostname())
        code, _, err = cli(monkeypatch, capsys, "kill", names["a"], "--grace", "1")
        assert code == 2
        one_error_line(err, f"run {names['a']} is not running (status failed): process vanished (no start time "
                            f"was recorded with pid {sleeper.pid}")
        assert Registry(runs).get_run(names["a"])["status"] == "failed"
        registry.insert(JOBS, {"id": "jnostart", "kind": "eval", "run_id": names["b"], "status": "running",
                               "pid": sleeper.pid, "created": time.time()})
        code, out, err = cli(monkeypatch, capsys, "kill", "jnostart", "--grace", "1")
        assert code == 0, err
        assert f"pid {sleeper.pid} was not signalled: no start time was recorded with it" in out
        time.sleep(0.3)
        assert sleeper.poll() is None  # never signalled
    finally:
        sleeper.kill()
        sleeper.wait()


# == what a kill in the middle of a checkpoint save leaves =========================================
def test_a_resume_sweeps_stale_checkpoint_temporaries_and_ends_each_epoch_once(runs, monkeypatch, capsys):
    names = ids(runs)
    folder = runs / names["a"]
    stale = [".last.pt.k2j4_x9q.tmp", ".final.pt.0abcdefg.tmp"]
    others = [".other.pt.abcdefgh.tmp", "notes.tmp", ".last.pt.tmp"]  # not what a killed save leaves
    for name in stale + others:
        (folder / "checkpoints" / name).write_bytes(b"\x00" * 100)
    # As if the process that redoes epoch 2 had been killed once before, while saving after that
    # epoch's event: the stream already ends epoch 2.
    stream = (folder / "events.jsonl").read_bytes().splitlines()
    epoch_one = json.loads(next(line for line in stream if b'"kind":"epoch"' in line))
    with open(folder / "events.jsonl", "ab") as f:
        f.write(json.dumps({**epoch_one, "epoch": 2}).encode() + b"\n")
    code, _, err = cli(monkeypatch, capsys, "run", "--resume", names["a"], "--epochs", "2")
    assert code == 0, err
    left = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert left == sorted(["best.pt", "last.pt", "final.pt", *others])
    from advtui.core.events import read_events

    assert [e["epoch"] for e in read_events(folder / "events.jsonl", {"epoch"})] == [1, 2]
    assert Registry(runs).get_run(names["a"])["status"] == "finished"


def test_the_temporary_a_save_killed_with_sigkill_leaves_is_what_the_sweep_removes(tmp_path):
    """A real kill -9 in the middle of an atomic write, then the sweep a run's start does."""
    from advtui.core.atomic import remove_stale_temporaries

    script = ("import sys, time; from advtui.core.atomic import atomic_open\n"
              "with atomic_open(sys.argv[1], 'wb') as f:\n"
              "    f.write(b'half a checkpoint'); f.flush(); print('writing', flush=True); time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    writer = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "last.pt")], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert writer.stdout.readline().strip() == "writing"
        writer.kill()
        writer.wait()
    finally:
        writer.kill()
    (left,) = [p.name for p in tmp_path.iterdir()]
    assert left.startswith(".last.pt.") and left.endswith(".tmp")  # no last.pt: the rename never happened
    (tmp_path / "notes.txt").write_text("kept")
    assert remove_stale_temporaries(tmp_path, ("last.pt", "final.pt")) == [left]
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
