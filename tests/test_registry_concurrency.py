"""Registry safety: many writer processes at once, corrupt or unreadable files, schema version,
names that would leave runs/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from advtui.core.errors import ConfigError, RegistryError
from advtui.core.paths import check_safe_name, run_dir
from advtui.store.registry import JOBS, QUEUE_FILE, REGISTRY_FILE, RUN_FILE, SCHEMA_VERSION, Registry

WRITERS = 16
ROUNDS = 10

# Each writer creates runs, updates its own runs, bumps one shared counter with a
# read-modify-write, and reads everything back, all at the same time as the others.
WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from advtui.store.registry import JOBS, Registry

    root, writer, rounds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    registry = Registry(root)
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    for i in range(rounds):
        run = registry.create_run({"name": f"w{writer}-{i}", "writer": writer})
        registry.update_run(run["id"], epoch=i + 1, status="running")
        with registry.transaction() as db:
            counters = db.table(JOBS, cache_size=0)
            (counter,) = counters.all()
            counters.update({"value": counter["value"] + 1}, doc_ids=[counter.doc_id])
        seen = [r for r in registry.runs() if r.get("writer") == writer]
        assert len(seen) == i + 1, (writer, i, len(seen))
    print("done", flush=True)
""")


def test_sixteen_concurrent_writer_processes_lose_no_update_and_never_corrupt_a_file(tmp_path):
    registry = Registry(tmp_path)
    registry.insert(JOBS, {"value": 0})
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(w), str(ROUNDS)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for w in range(WRITERS)]
    for w in writers:
        assert w.stdout.readline().strip() == "ready"
    for w in writers:  # release them all at once
        w.stdin.write("go\n")
        w.stdin.flush()
    # read while they write: every read must see whole files
    reads = 0
    while any(w.poll() is None for w in writers):
        json.loads((tmp_path / QUEUE_FILE).read_text())
        for path in list(tmp_path.glob(f"*/{RUN_FILE}"))[:5]:
            json.loads(path.read_text())
        registry.runs()
        assert registry.damaged == []
        reads += 1
    for w in writers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0 and out.strip() == "done", err
    assert reads > 0

    runs = registry.runs()
    assert len(runs) == WRITERS * ROUNDS
    assert len({r["id"] for r in runs}) == WRITERS * ROUNDS  # unique ids
    assert {r["name"] for r in runs} == {f"w{w}-{i}" for w in range(WRITERS) for i in range(ROUNDS)}
    assert all(r["status"] == "running" and r["epoch"] == int(r["name"].split("-")[1]) + 1 for r in runs)
    assert registry.all(JOBS)[0]["value"] == WRITERS * ROUNDS  # no lost read-modify-write
    data = json.loads((tmp_path / REGISTRY_FILE).read_text())
    assert list(data["_meta"].values()) == [{**list(data["_meta"].values())[0], "schema": SCHEMA_VERSION}]
    json.loads((tmp_path / f"{QUEUE_FILE}.bak").read_text())  # the last good copies are whole too
    for run in runs:
        assert json.loads(registry.run_path(run["id"]).with_name(f"{RUN_FILE}.bak").read_text())["runs"]["1"]["id"] == run["id"]
    leftovers = [str(p) for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    assert leftovers == []


def test_the_last_good_copy_is_the_state_before_the_last_write(tmp_path):
    registry = Registry(tmp_path)
    first = registry.create_run({"name": "first"})
    path = registry.run_path(first["id"])
    before = path.read_text()
    registry.update_run(first["id"], status="finished")
    assert path.with_name(f"{RUN_FILE}.bak").read_text() == before
    assert json.loads(before)["runs"]["1"]["status"] == "queued"
    registry.insert(JOBS, {"id": "j000001", "status": "queued"})
    queued = (tmp_path / QUEUE_FILE).read_text()
    registry.update(JOBS, {"id": "j000001"}, {"status": "running"})
    assert (tmp_path / f"{QUEUE_FILE}.bak").read_text() == queued


DAMAGE = [
    (b'{"runs": {"1": {"id": "abc"', "is corrupt"),  # a write cut short
    (b"", "is empty"),  # truncated to nothing
    (b"\x00\x00\x00\x00", "is corrupt"),  # zeroed blocks after a crash
    (b"[1, 2, 3]", "is corrupt"),  # valid JSON, not a registry file
    (b'{"runs": {"1": 5}}', "is corrupt"),  # tables, but no documents in them
    (b"{\xff}", "is corrupt"),  # not UTF-8
]


def _damage(registry: Registry, which: str, damage: bytes):
    """Give every file a last good copy, then damage the ``which`` file; returns its path and copy."""
    kept = registry.create_run({"name": "keep-me"})
    registry.update_run(kept["id"], status="finished")
    other = registry.create_run({"name": "and-me"})
    registry.insert(JOBS, {"id": "j000001", "status": "queued"})
    registry.update(JOBS, {"id": "j000001"}, {"status": "running"})
    registry.upsert("reproductions", {"table": "t3"}, {"plan": 1})
    registry.upsert("reproductions", {"table": "t3"}, {"plan": 2})
    path = {"run": registry.run_path(kept["id"]), "queue": registry.queue_path, "registry": registry.path}[which]
    good = path.with_name(f"{path.name}.bak").read_bytes()
    path.write_bytes(damage)
    return kept, other, path, good


@pytest.mark.parametrize("damage, message", DAMAGE)
@pytest.mark.parametrize("which", ["run", "queue", "registry"])
def test_a_damaged_file_is_reported_and_neither_it_nor_its_last_good_copy_is_overwritten(
        tmp_path, which, damage, message):
    registry = Registry(tmp_path)
    kept, other, path, good = _damage(registry, which, damage)
    failing = {
        "run": [lambda: registry.get_run(kept["id"]), lambda: registry.update_run(kept["id"], epoch=2),
                lambda: registry.resolve_run(kept["id"]), lambda: registry.resolve_run(kept["id"][:5]),
                lambda: registry.search("results", run_id=kept["id"])],
        "queue": [lambda: registry.all(JOBS), lambda: registry.update(JOBS, {"id": "x"}, {"status": "done"}),
                  lambda: registry.insert(JOBS, {"id": "j2"})],
        "registry": [registry.runs, lambda: registry.create_run({"name": "new"}),
                     lambda: registry.update(JOBS, {"id": "x"}, {"status": "done"}), lambda: registry.resolve_run("x"),
                     lambda: registry.all("reproductions")],
    }[which]
    for action in failing:
        with pytest.raises(RegistryError) as info:
            action()
        assert message in str(info.value) and f"{path.name}.bak" in str(info.value) and str(path) in str(info.value)
        assert "\n" not in str(info.value)  # one line for the CLI
    assert path.read_bytes() == damage
    assert path.with_name(f"{path.name}.bak").read_bytes() == good
    if which == "run":  # the other runs carry on, and the listing says which file is damaged
        assert b"keep-me" in good
        assert [r["name"] for r in registry.runs()] == ["and-me"]
        assert registry.damaged == [str(info.value)]
        registry.update_run(other["id"], status="finished")
        assert registry.resolve_run("and-me")["status"] == "finished"
    if which == "queue":  # runs are not in the queue's file
        assert len(registry.runs()) == 2
        registry.update_run(other["id"], status="finished")


def test_the_cli_reports_a_corrupt_registry_in_one_line(tmp_path):
    Registry(tmp_path).create_run({"name": "x"})
    (tmp_path / REGISTRY_FILE).write_text("{not json")
    for args in (["ls"], ["queue", "ls"], ["worker", "--once"]):
        proc = subprocess.run([sys.executable, "-m", "advtui", *args, "--runs-dir", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: the registry"), proc.stderr
    assert (tmp_path / REGISTRY_FILE).read_text() == "{not json"


def test_the_cli_lists_the_healthy_runs_beside_a_damaged_run_file_and_says_which(tmp_path):
    registry = Registry(tmp_path)
    bad, good = registry.create_run({"name": "bad-one"}), registry.create_run({"name": "good-one"})
    registry.run_path(bad["id"]).write_text("{not json")
    proc = subprocess.run([sys.executable, "-m", "advtui", "ls", "--runs-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and good["id"] in proc.stdout and bad["id"] not in proc.stdout
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("warning: the registry file ") and str(registry.run_path(bad["id"])) in line
    proc = subprocess.run([sys.executable, "-m", "advtui", "show", bad["id"], "--runs-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    (line,) = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and line.startswith("error: the registry file ") and "is corrupt" in line
    assert registry.run_path(bad["id"]).read_text() == "{not json"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_an_unreadable_registry_is_a_clear_error(tmp_path):
    run = Registry(tmp_path).create_run({"name": "x"})
    (tmp_path / REGISTRY_FILE).chmod(0)
    try:
        with pytest.raises(RegistryError, match="cannot read the registry"):
            Registry(tmp_path).runs()
    finally:
        (tmp_path / REGISTRY_FILE).chmod(0o644)
    Registry(tmp_path).run_path(run["id"]).chmod(0)
    with pytest.raises(RegistryError, match="cannot read the registry"):
        Registry(tmp_path).get_run(run["id"])


def test_schema_version_is_recorded_and_a_newer_one_is_refused_untouched(tmp_path):
    registry = Registry(tmp_path)
    registry.create_run({"name": "x"})
    data = json.loads((tmp_path / REGISTRY_FILE).read_text())
    (meta,) = data["_meta"].values()
    assert meta["schema"] == SCHEMA_VERSION and meta["created"] > 0
    meta["schema"] = SCHEMA_VERSION + 1
    (tmp_path / REGISTRY_FILE).write_text(json.dumps(data))
    before = (tmp_path / REGISTRY_FILE).read_bytes()
    with pytest.raises(RegistryError, match="newer than this advtui understands"):
        registry.create_run({"name": "y"})
    with pytest.raises(RegistryError, match="upgrade advtui"):
        registry.runs()
    assert (tmp_path / REGISTRY_FILE).read_bytes() == before


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "x/../../y", "/abs", ".hidden", "a\\b", "ok\n", "", "é"])
def test_names_and_ids_never_escape_the_runs_dir(tmp_path, name):
    with pytest.raises(ConfigError):
        check_safe_name(name)
    with pytest.raises(ConfigError):
        run_dir(tmp_path, name)


def test_queue_train_refuses_an_escaping_name_and_stores_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "advtui", "queue", "train", "--defense", "plain",
                           "--name", "../../outside", "--runs-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: invalid run name")
    assert not (tmp_path / REGISTRY_FILE).exists() or Registry(tmp_path).runs() == []
