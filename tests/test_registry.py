import json

import pytest

from advtui.errors import ConfigError, RegistryError, RunNotFoundError
from advtui.paths import run_dir
from advtui.registry import Registry


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
    meta = json.loads((tmp_path / "advtui.json").read_text())["_meta"]
    assert list(meta.values())[0]["schema"] == 1


def test_corrupt_registry_is_reported_and_left_untouched(tmp_path):
    reg = Registry(tmp_path)
    reg.create_run({"name": "keep"})
    reg.create_run({"name": "keep2"})
    good = (tmp_path / "advtui.json.bak").read_text()
    (tmp_path / "advtui.json").write_text('{"runs": {"1": {"id": "abc"')
    with pytest.raises(RegistryError) as info:
        reg.create_run({"name": "new"})
    assert "corrupt" in str(info.value) and "advtui.json.bak" in str(info.value)
    assert (tmp_path / "advtui.json").read_text() == '{"runs": {"1": {"id": "abc"'
    assert (tmp_path / "advtui.json.bak").read_text() == good
    assert "keep" in good


def test_run_ids_cannot_escape_the_runs_dir(tmp_path):
    for bad in ("../x", "a/b", "..", ".hidden", ""):
        with pytest.raises(ConfigError):
            run_dir(tmp_path, bad)
    assert run_dir(tmp_path, "abc123") == (tmp_path / "abc123").resolve()
