"""The sharded run store: migration from the single-file registry, the per-process read cache,
the archive of ended jobs, and transactions over several files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from store_support import legacy_jobs_root

import advtui.store.archive as archive
import advtui.store.files as files
import advtui.store.listing as listing
import advtui.store.registry as store
from advtui.core.errors import RegistryError
from advtui.jobs.queue import list_jobs, resolve_job
from advtui.store.registry import (
    ARCHIVE_DIR, JOBS, LEGACY_FILE, QUEUE_FILE, REGISTRY_FILE, RESULTS, RUN_FILE, RUNS, SCHEMA_VERSION, Registry,
)

# A registry written through the API of the single-file version (the commit before the store was
# sharded): three runs (one evaluated), train and eval jobs in every status, and a reproduction
# plan, with the .bak that version kept.
LEGACY = Path(__file__).parent / "data" / "advtui-v1.json"


def _legacy_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    root.mkdir()
    shutil.copy(LEGACY, root / LEGACY_FILE)
    shutil.copy(LEGACY.with_name(LEGACY.name + ".bak"), root / f"{LEGACY_FILE}.bak")
    return root


def _docs(data: dict, table: str) -> list[dict]:
    return list((data.get(table) or {}).values())


def _key(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True)


# -- migration --------------------------------------------------------------------------------------
def test_a_registry_written_by_the_single_file_version_is_migrated_whole_and_kept(tmp_path):
    root = _legacy_root(tmp_path)
    original = (root / LEGACY_FILE).read_bytes()
    old = json.loads(original)
    assert len(_docs(old, RUNS)) == 3 and len(_docs(old, JOBS)) >= 4 and _docs(old, RESULTS) and _docs(old, "reproductions")

    registry = Registry(root)
    runs = registry.runs()
    assert sorted(map(_key, runs)) == sorted(map(_key, _docs(old, RUNS)))
    assert sorted(map(_key, registry.all(JOBS))) == sorted(map(_key, _docs(old, JOBS)))
    assert sorted(map(_key, registry.all(RESULTS))) == sorted(map(_key, _docs(old, RESULTS)))
    # The plan kept its earlier shape (runs, evals and attacks, no rows or columns): moved whole,
    # and hidden with one line, since `advtui report` reads plans by their rows and columns.
    assert _docs(json.loads((root / REGISTRY_FILE).read_text()), "reproductions") == _docs(old, "reproductions")
    assert registry.all("reproductions") == []
    (problem,) = registry.record_problems()
    assert "has a damaged plan table3 (Object missing required field `rows`)" in problem
    # each run in its own file, with its results
    for run in runs:
        data = json.loads(registry.run_path(run["id"]).read_text())
        assert _docs(data, RUNS) == [run]
        assert sorted(map(_key, _docs(data, RESULTS))) == sorted(
            _key(r) for r in _docs(old, RESULTS) if r["run_id"] == run["id"])
    # ended jobs are in the archive, live ones in the queue's file
    hot = _docs(json.loads((root / QUEUE_FILE).read_text()), JOBS)
    assert hot and all(j["status"] in ("queued", "running") for j in hot)
    assert {j["status"] for j in registry.all(JOBS)} >= {"queued", "done", "cancelled"}
    # the original is kept, byte for byte; the store records where it came from
    assert not (root / LEGACY_FILE).exists() and not (root / f"{LEGACY_FILE}.bak").exists()
    assert (root / f"{LEGACY_FILE}.migrated").read_bytes() == original
    assert (root / f"{LEGACY_FILE}.migrated.bak").exists()
    (meta,) = _docs(json.loads((root / REGISTRY_FILE).read_text()), "_meta")
    assert meta["schema"] == SCHEMA_VERSION and meta["migrated"]["from"] == LEGACY_FILE
    assert meta["migrated"]["runs"] == 3
    # and the store works on: the queue's functions see the migrated jobs
    queued = [j for j in _docs(old, JOBS) if j["status"] == "queued"][0]
    assert resolve_job(registry, queued["id"])["run_id"] == queued["run_id"]
    assert len(list_jobs(registry)) == len(_docs(old, JOBS))
    new = registry.create_run({"name": "after"})
    assert new["id"] not in {r["id"] for r in runs} and len(Registry(root).runs()) == 4


def test_processes_starting_at_once_migrate_once(tmp_path):
    root = _legacy_root(tmp_path)
    old = json.loads((root / LEGACY_FILE).read_text())
    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        from advtui.store.registry import Registry
        sys.stdin.readline()
        registry = Registry(Path(sys.argv[1]))
        print(len(registry.runs()), len(registry.all("jobs")), flush=True)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.split() == [str(len(_docs(old, RUNS))), str(len(_docs(old, JOBS)))]
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(LEGACY_FILE) and not p.name.endswith(".lock")) \
        == [f"{LEGACY_FILE}.migrated", f"{LEGACY_FILE}.migrated.bak"]


def test_a_damaged_legacy_registry_is_reported_and_not_migrated(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    (root / LEGACY_FILE).write_text('{"runs": {"1": {"id": "abc"')
    with pytest.raises(RegistryError, match="is corrupt") as info:
        Registry(root).runs()
    assert "\n" not in str(info.value)
    assert (root / LEGACY_FILE).read_text() == '{"runs": {"1": {"id": "abc"'
    assert not (root / REGISTRY_FILE).exists()


def test_an_interrupted_migration_is_finished_and_a_legacy_file_written_later_is_refused(tmp_path):
    root = _legacy_root(tmp_path)
    original = (root / LEGACY_FILE).read_bytes()
    Registry(root).runs()
    # as if the process died between writing the store and renaming the original
    os.replace(root / f"{LEGACY_FILE}.migrated", root / LEGACY_FILE)
    assert len(Registry(root).runs()) == 3
    assert (root / f"{LEGACY_FILE}.migrated").read_bytes() == original and not (root / LEGACY_FILE).exists()
    # an older advtui wrote a fresh single file after the migration: refuse, touch nothing
    (root / LEGACY_FILE).write_text(json.dumps({"runs": {"1": {"id": "ffffff", "name": "late"}}}))
    with pytest.raises(RegistryError, match="both exist"):
        Registry(root).runs()
    assert json.loads((root / LEGACY_FILE).read_text())["runs"]["1"]["name"] == "late"


def test_many_ended_jobs_migrate_into_archive_files(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "ARCHIVE_CHUNK", 4)
    root = tmp_path / "runs"
    jobs = legacy_jobs_root(root, 12, ended=10)
    registry = Registry(root)
    assert sorted(j["id"] for j in registry.all(JOBS)) == sorted(j["id"] for j in jobs.values())
    assert sorted(p.name for p in (root / ARCHIVE_DIR).glob("*.json")) == ["00000001.json", "00000002.json",
                                                                           "00000003.json"]
    assert len(_docs(json.loads((root / QUEUE_FILE).read_text()), JOBS)) == 2


# -- reading: one parse per version of each file ------------------------------------------------------
CHANGER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from advtui.store.registry import Registry
    registry = Registry(Path(sys.argv[1]))
    for line in sys.stdin:
        run_id, epoch = line.split()
        registry.update_run(run_id, epoch=int(epoch))
        print("ok", flush=True)
""")


def test_the_listing_cache_sees_every_write_of_another_process(tmp_path):
    registry = Registry(tmp_path)
    ids = [registry.create_run({"name": f"r{i}", "epoch": 0})["id"] for i in range(3)]
    assert [r["epoch"] for r in registry.runs()] == [0, 0, 0]
    changer = subprocess.Popen([sys.executable, "-c", CHANGER, str(tmp_path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        # same-size changes in quick succession: the mtime may not move, the file's identity does
        for epoch in range(1, 10):
            changer.stdin.write(f"{ids[1]} {epoch}\n")
            changer.stdin.flush()
            assert changer.stdout.readline().strip() == "ok"
            assert [r["epoch"] for r in registry.runs()] == [0, epoch, 0]
            assert registry.get_run(ids[1])["epoch"] == epoch
    finally:
        changer.stdin.close()
        changer.wait(timeout=30)


def test_a_listing_parses_only_the_files_that_changed(tmp_path, monkeypatch):
    registry = Registry(tmp_path)
    ids = [registry.create_run({"name": f"r{i}"})["id"] for i in range(5)]
    monkeypatch.setattr(files, "RACY_NS", 0)  # as if every file were written long ago
    loads = []
    real_load = files._load
    monkeypatch.setattr(files, "_load", lambda path, *a, **k: loads.append(os.path.basename(os.path.dirname(path)))
                        or real_load(path, *a, **k))
    registry.runs()
    loads.clear()
    assert len(registry.runs()) == 5 and loads == []
    # another process's write (simulated by hand: a whole new file, as the store writes them)
    path = registry.run_path(ids[2])
    data = json.loads(path.read_text())
    data[RUNS]["1"]["name"] = "R2"
    tmp = path.with_name("x.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
    assert [r["name"] for r in registry.runs()] == ["r0", "r1", "R2", "r3", "r4"]
    assert loads == [ids[2]]


def test_listed_records_are_copies(tmp_path):
    registry = Registry(tmp_path)
    run = registry.create_run({"name": "a"})
    registry.runs()[0]["name"] = "changed by a caller"
    registry.get_run(run["id"])["status"] = "changed"
    assert registry.runs()[0]["name"] == "a" and registry.get_run(run["id"])["status"] == "queued"


# -- the archive of ended jobs ---------------------------------------------------------------------------
def test_ended_jobs_move_to_the_archive_and_stay_readable_and_changeable(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "ARCHIVE_AFTER", 3)
    monkeypatch.setattr(archive, "ARCHIVE_CHUNK", 2)
    registry = Registry(tmp_path)
    for i in range(8):
        registry.insert(JOBS, {"id": f"j{i:06x}", "status": "queued", "created": float(i), "kind": "train",
                               "run_id": "abcdef"})
    for i in range(5):  # the fourth ended job moves all four out of the hot file
        assert registry.update(JOBS, {"id": f"j{i:06x}", "status": "queued"}, {"status": "done", "ended": float(i)}) == 1
    hot = _docs(json.loads((tmp_path / QUEUE_FILE).read_text()), JOBS)
    assert sorted(j["id"] for j in hot) == [f"j{i:06x}" for i in range(4, 8)]
    archived = sorted((tmp_path / ARCHIVE_DIR).glob("*.json"))
    assert [p.name for p in archived] == ["00000001.json", "00000002.json"]
    assert sorted(j["id"] for p in archived for j in _docs(json.loads(p.read_text()), JOBS)) == \
        [f"j{i:06x}" for i in range(4)]
    # every job is listed once, archived or not
    assert sorted(j["id"] for j in registry.all(JOBS)) == [f"j{i:06x}" for i in range(8)]
    assert [j["id"] for j in registry.search(JOBS, status="done")] == [f"j{i:06x}" for i in range(5)]
    assert registry.search(JOBS, status="queued") == [j for j in registry.all(JOBS) if j["status"] == "queued"]
    assert registry.archived_job_ids() == {f"j{i:06x}" for i in range(4)}
    assert [j["status"] for j in registry.search(JOBS, id="j000001")] == ["done"]  # archived
    assert [j["status"] for j in registry.search(JOBS, id="j000005")] == ["queued"]  # in the queue
    assert registry.search(JOBS, id="j000005", status="done") == [] and registry.search(JOBS, id="jnone") == []
    # an archived job can change; made live again (a re-queued eval) it moves back
    assert registry.update(JOBS, {"id": "j000001"}, {"note": "x"}) == 1
    assert resolve_job(registry, "j000001")["note"] == "x"
    assert registry.update(JOBS, {"id": "j000000", "status": "done"}, {"status": "queued"}) == 1
    hot = _docs(json.loads((tmp_path / QUEUE_FILE).read_text()), JOBS)
    assert "j000000" in {j["id"] for j in hot} and "j000000" not in registry.archived_job_ids()
    assert sorted(j["id"] for j in registry.all(JOBS)) == [f"j{i:06x}" for i in range(8)]
    assert registry.remove(JOBS, {"id": "j000002"}) == 1 and len(registry.all(JOBS)) == 7
    assert registry.update(JOBS, {"id": "j000003", "status": "queued"}, {"status": "running"}) == 0


def test_a_second_archiving_fills_the_last_archive_file_before_starting_a_new_one(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "ARCHIVE_AFTER", 2)
    monkeypatch.setattr(archive, "ARCHIVE_CHUNK", 5)
    registry = Registry(tmp_path)
    for i in range(6):
        registry.insert(JOBS, {"id": f"j{i:06x}", "status": "queued", "created": float(i)})
    for i in range(6):  # the third and the sixth ended job each move the ended ones out
        registry.update(JOBS, {"id": f"j{i:06x}"}, {"status": "done", "ended": float(i)})
    archived = sorted((tmp_path / ARCHIVE_DIR).glob("*.json"))
    assert [len(_docs(json.loads(p.read_text()), JOBS)) for p in archived] == [5, 1]
    assert registry.archived_job_ids() == {f"j{i:06x}" for i in range(6)}
    assert sorted(j["id"] for j in registry.all(JOBS)) == [f"j{i:06x}" for i in range(6)]


def test_a_job_in_both_the_queue_and_the_archive_is_listed_once(tmp_path, monkeypatch):
    """An archiving interrupted between its two writes leaves a copy behind: never a loss."""
    registry = Registry(tmp_path)
    registry.insert(JOBS, {"id": "j000001", "status": "done", "v": "hot"})
    (tmp_path / ARCHIVE_DIR).mkdir()
    (tmp_path / ARCHIVE_DIR / "00000001.json").write_text(json.dumps({JOBS: {"1": {"id": "j000001", "status": "done",
                                                                                    "v": "archived"}}}))
    assert [j["v"] for j in registry.all(JOBS)] == ["hot"]


# -- transactions ----------------------------------------------------------------------------------------
def test_a_transaction_that_raises_writes_nothing(tmp_path):
    registry = Registry(tmp_path)
    registry.insert(JOBS, {"id": "j1", "status": "queued"})
    before = (tmp_path / QUEUE_FILE).read_bytes()
    with pytest.raises(ZeroDivisionError):
        with registry.transaction() as db:
            db.table(JOBS).insert({"id": "j2"})
            1 / 0
    assert (tmp_path / QUEUE_FILE).read_bytes() == before and [j["id"] for j in registry.all(JOBS)] == ["j1"]


def test_nested_transactions_lock_the_queue_then_run_files_and_refuse_the_other_order(tmp_path):
    registry = Registry(tmp_path)
    run = registry.create_run({"name": "a"})
    with registry.transaction() as db:  # queue, then a run's file: as queue_train does
        db.table(JOBS).insert({"id": "j1", "run_id": run["id"], "status": "queued"})
        registry.update_run(run["id"], status="running")
        with registry.transaction(RESULTS, run_id=run["id"]) as rdb:
            rdb.table(RESULTS).insert({"run_id": run["id"], "attack": "natural"})
    assert registry.get_run(run["id"])["status"] == "running"
    assert registry.search(RESULTS, run_id=run["id"]) == [{"run_id": run["id"], "attack": "natural"}]
    assert [j["id"] for j in registry.all(JOBS)] == ["j1"]
    with registry.transaction(RUNS, run_id=run["id"]):
        with pytest.raises(RuntimeError, match="lock order"):
            with registry.transaction(JOBS):
                pass
    with pytest.raises(RuntimeError, match="does not live in"):
        with registry.transaction() as db:
            db.table(RUNS)


def test_a_run_folder_that_exists_is_never_given_to_a_new_run(tmp_path, monkeypatch):
    registry = Registry(tmp_path)
    taken = ["aaaaaa", "bbbbbb"]
    (tmp_path / "aaaaaa").mkdir()  # a leftover folder without a record
    registry.insert(RUNS, {"id": "bbbbbb", "name": "b"})
    tokens = iter(taken + ["cccccc"])
    real = store.secrets.token_hex
    monkeypatch.setattr(store.secrets, "token_hex", lambda n: next(tokens) if n == 3 else real(n))
    assert registry.create_run({"name": "c"})["id"] == "cccccc"
    with pytest.raises(RegistryError, match="exists already"):
        registry.insert(RUNS, {"id": "bbbbbb", "name": "again"})


def test_the_registry_file_changes_with_every_write_anywhere(tmp_path):
    """The scheduler and the dashboard watch registry.json's stat to skip rereading an idle store."""
    registry = Registry(tmp_path)
    run = registry.create_run({"name": "a"})

    def stamp():
        st = os.stat(tmp_path / REGISTRY_FILE)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    seen = {stamp()}
    for write in (lambda: registry.update_run(run["id"], epoch=1), lambda: registry.insert(JOBS, {"id": "j1"}),
                  lambda: registry.upsert("reproductions", {"table": "t"}, {"x": 1}),
                  lambda: registry.insert(RESULTS, {"run_id": run["id"], "attack": "natural"})):
        write()
        assert stamp() not in seen
        seen.add(stamp())
        time.sleep(0.001)
    registry.runs()
    assert stamp() in seen  # reading changes nothing


def test_a_nested_step_that_fails_keeps_the_outer_steps_changes_only(tmp_path):
    registry = Registry(tmp_path)
    with registry.transaction() as db:
        db.table(JOBS).insert({"id": "j1"})
        with pytest.raises(KeyError):
            with registry.transaction() as inner:
                inner.table(JOBS).insert({"id": "j2"})
                raise KeyError("no")
        db.table(JOBS).insert({"id": "j3"})
    assert [j["id"] for j in registry.all(JOBS)] == ["j1", "j3"]


def test_insert_multiple_writes_one_file_per_run(tmp_path):
    registry = Registry(tmp_path)
    registry.insert_multiple(RUNS, [{"id": f"{i:06x}", "name": f"r{i}", "created": float(i)} for i in range(3)])
    assert [r["name"] for r in registry.runs()] == ["r0", "r1", "r2"]
    assert all(registry.run_path(f"{i:06x}").exists() for i in range(3)) and (tmp_path / REGISTRY_FILE).exists()
    with pytest.raises(RegistryError, match="exists already"):
        registry.insert_multiple(RUNS, [{"id": "000001", "name": "again"}])


def test_a_fresh_process_starts_from_the_listing_cache_and_still_sees_later_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(listing, "LISTING_CACHE_MIN_RUNS", 3)
    monkeypatch.setattr(files, "RACY_NS", 0)  # as if every file were written long ago
    registry = Registry(tmp_path)
    ids = [registry.create_run({"name": f"r{i}", "created": float(i)})["id"] for i in range(5)]
    files.clear_read_cache()
    registry.runs()  # parses all five: leaves the cache for the next process
    assert (tmp_path / listing.LISTING_CACHE).exists()
    loads = []
    real_load = files._load
    monkeypatch.setattr(files, "_load", lambda path, *a, **k: loads.append(os.path.basename(path)) or real_load(path, *a, **k))
    files.clear_read_cache()  # a fresh process
    assert [r["name"] for r in Registry(tmp_path).runs()] == [f"r{i}" for i in range(5)]
    assert RUN_FILE not in loads  # every run from the cache, none parsed
    # written after the cache: the stat differs, so that file is read
    Registry(tmp_path).update_run(ids[3], name="changed")
    files.clear_read_cache()
    loads.clear()
    assert [r["name"] for r in Registry(tmp_path).runs()] == ["r0", "r1", "r2", "changed", "r4"]
    assert loads.count(RUN_FILE) == 1


def test_the_listing_cache_gives_back_exactly_what_the_run_files_hold(tmp_path, monkeypatch):
    monkeypatch.setattr(listing, "LISTING_CACHE_MIN_RUNS", 3)
    monkeypatch.setattr(files, "RACY_NS", 0)
    registry = Registry(tmp_path)
    configs = [{"defense": "pgd", "lr": 0.1, "eps": 0.0, "seed": 1, "flag": True, "steps": [1, 2], "x": None},
               {"defense": "pgd", "lr": 0.1, "eps": -0.0, "seed": 1.0, "flag": 1, "steps": [1, 2], "x": None},
               {"defense": "pgd", "lr": 0.2, "eps": 0.0, "seed": 2, "flag": False, "steps": [1], "x": {"a": 1}},
               {"seed": 3, "defense": "pgd"}, {"defense": "trades", "lr": 0.1}, {}]
    for i, config in enumerate(configs):
        registry.create_run({"name": f"r{i}", "created": float(i), "config": config})
    odd = registry.create_run({"name": "odd", "created": 9.0})
    registry.update_run(odd["id"], config=3)  # not a config: a damaged file, left out of both listings
    files.clear_read_cache()
    expected = registry.runs()  # parses every file, leaves the cache
    assert len(registry.damaged) == 1 and "config is int, not dict" in registry.damaged[0]
    files.clear_read_cache()
    loads = []
    real_load = files._load
    monkeypatch.setattr(files, "_load", lambda path, *a, **k: loads.append(os.path.basename(path)) or real_load(path, *a, **k))
    got = Registry(tmp_path).runs()
    assert loads.count(RUN_FILE) == 1  # the damaged file only (damage is not cached across processes)
    assert json.dumps(got) == json.dumps(expected)  # values, types, signs and key order
    assert [type(r["config"]) for r in got] == [dict] * 6
    assert got[0]["config"]["steps"] is not got[1]["config"]["steps"]  # nothing mutable shared


@pytest.mark.parametrize("garbage", [b"", b"{not json", b'{"version": 1, "files": {"x": 5}}', b"[1]",
                                     b'{"version": 1, "files": {"000001": [1, 2, 3, 4, 5, {"runs": 7}]}}',
                                     b'{"version": 2, "configs": [{"a": 1}], "files": {"000001": [1, 2, 3, 4, 5, '
                                     b'{"runs": {"1": {"config": 4}}}, {"1": {"a": 2}}]}}',
                                     b'{"version": 2, "configs": 5, "files": {}}'])
def test_a_damaged_listing_cache_is_ignored(tmp_path, monkeypatch, garbage):
    monkeypatch.setattr(listing, "LISTING_CACHE_MIN_RUNS", 3)
    registry = Registry(tmp_path)
    for i in range(3):
        registry.create_run({"name": f"r{i}", "created": float(i)})
    (tmp_path / listing.LISTING_CACHE).write_bytes(garbage)
    files.clear_read_cache()
    assert [r["name"] for r in Registry(tmp_path).runs()] == ["r0", "r1", "r2"]


# A runs folder as the sharded store of schema 2 wrote it before the store became a package (advtui
# 0.1.0 before its layers were split): a trained advtrain run (one short epoch) with a natural and an
# fgsm result on 20 test examples, two queued trades runs, one of whose train jobs was cancelled. Only the checkpoints
# were left out (their size); lock files are made on first use.
SCHEMA2_RUNS = Path(__file__).parent / "data" / "runs-schema2"


def test_a_runs_folder_written_before_the_store_package_opens_whole(tmp_path, monkeypatch, capsys):
    from advtui.core.records import JobRecord, RunRecord
    from advtui.store.results import results_for_run
    from test_faults import cli

    root = tmp_path / "runs"
    shutil.copytree(SCHEMA2_RUNS, root)
    registry = Registry(root)
    assert registry.record_problems() == []
    runs = {r["name"]: RunRecord.from_dict(r) for r in registry.runs()}
    assert {name: run.status for name, run in runs.items()} == {
        "advtrain-mnist-s0": "finished", "trades-mnist-s0": "queued", "trades-mnist-s1": "killed"}
    trained = runs["advtrain-mnist-s0"]
    assert (trained.epoch, trained.epochs, trained.defense) == (1, 1, "advtrain")
    jobs = {j["run_id"]: JobRecord.from_dict(j) for j in registry.all(JOBS)}
    assert {runs[n].id: jobs[runs[n].id].status for n in ("trades-mnist-s0", "trades-mnist-s1")} == {
        runs["trades-mnist-s0"].id: "queued", runs["trades-mnist-s1"].id: "cancelled"}
    results = results_for_run(registry, trained.id)
    written = json.loads((SCHEMA2_RUNS / trained.id / RUN_FILE).read_text())["results"].values()
    assert {a: (r["robust"], r["n"]) for a, r in results.items() if a in ("natural", "fgsm")} == {
        r["attack"]: (r["robust"], r["n"]) for r in written if r["kind"] == "attack"} == {
        "natural": (2, 20), "fgsm": (2, 20)}

    monkeypatch.setenv("ADVTUI_RUNS", str(root))
    for args in (["ls"], ["show", "advtrain-mnist-s0"], ["compare", "advtrain-mnist-s0"], ["queue", "ls"]):
        code, out, err = cli(monkeypatch, capsys, *args)
        assert code == 0 and "Traceback" not in err, (args, err)
    assert "advtrain-mnist-s0" in cli(monkeypatch, capsys, "ls")[1]
