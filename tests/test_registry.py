import json

import pytest

from advtui.core.errors import ConfigError, RegistryError, RunNotFoundError
from advtui.core.paths import run_dir
from advtui.store.registry import REGISTRY_FILE, SCHEMA_VERSION, Registry


def test_create_update_resolve(tmp_path):
    reg = Registry(tmp_path)
    a = reg.create_run({"name": "alpha", "defense": "plain"})
    b = reg.create_run({"name": "beta", "defense": "rnn-adv"})
    assert a["id"] != b["id"] and len(a["id"]) == 6
    reg.update_run(a["id"], status="running", epoch=3)
    assert reg.get_run(a["id"])["epoch"] == 3
    assert reg.resolve_run("beta")["id"] == b["id"]
    assert reg.resolve_run(a["id"][:6])["id"] == a["id"]
    with pytest.raises(RunNotFoundError):
        reg.resolve_run("gamma")
    with pytest.raises(RunNotFoundError):
        reg.update_run("ffffff", status="x")
    meta = json.loads((tmp_path / REGISTRY_FILE).read_text())["_meta"]
    assert list(meta.values())[0]["schema"] == SCHEMA_VERSION
    assert json.loads(reg.run_path(a["id"]).read_text())["runs"]["1"]["epoch"] == 3  # its own file


def test_corrupt_run_file_is_reported_and_left_untouched(tmp_path):
    reg = Registry(tmp_path)
    keep = reg.create_run({"name": "keep"})
    reg.update_run(keep["id"], status="running")
    other = reg.create_run({"name": "keep2"})
    path = reg.run_path(keep["id"])
    good = path.with_name("run.json.bak").read_text()
    path.write_text('{"runs": {"1": {"id": "abc"')
    with pytest.raises(RegistryError) as info:
        reg.update_run(keep["id"], status="finished")
    assert "corrupt" in str(info.value) and "run.json.bak" in str(info.value)
    assert path.read_text() == '{"runs": {"1": {"id": "abc"'
    assert path.with_name("run.json.bak").read_text() == good
    assert "keep" in good
    # the other runs carry on: a new one, and the healthy one
    new = reg.create_run({"name": "new"})
    reg.update_run(other["id"], status="finished")
    assert [r["name"] for r in reg.runs()] == ["keep2", "new"]
    assert len(reg.damaged) == 1 and keep["id"] in reg.damaged[0] and "corrupt" in reg.damaged[0]
    assert new["id"] != keep["id"]


def test_run_ids_cannot_escape_the_runs_dir(tmp_path):
    for bad in ("../x", "a/b", "..", ".hidden", ""):
        with pytest.raises(ConfigError):
            run_dir(tmp_path, bad)
    assert run_dir(tmp_path, "abc123") == (tmp_path / "abc123").resolve()
