"""Robustness curves (accuracy against eps and against attack iterations) and the audit, on crafted
results with manifests; ``advtui eval --eps`` takes a list and refuses a bad one in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_stats import _run, _store, clopper_pearson
from typer.testing import CliRunner

from advtui.cli import app
from advtui.compare import build_comparison, select_runs
from advtui.curves import audit_run
from advtui.store.registry import Registry
from store_support import store_snapshot

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def healthy(runs_root):
    """A run (training eps 0.3) whose accuracy falls with eps and with iterations, reaching 0 at eps 0.6."""
    registry = Registry(runs_root)
    run = _run(registry, "h", "advtrain", config={"eps": 0.3})
    for eps, robust in ((0.1, 34), (0.2, 28), (0.3, 20), (0.6, 0)):
        _store(registry, run, "pgd-100", range(robust), eps=eps)
    for attack, robust in (("pgd-10", 24), ("pgd-20", 22), ("pgd-50", 21)):
        _store(registry, run, attack, range(robust), eps=0.3)
    _store(registry, run, "aa", range(19), eps=0.3)
    return registry, run


def test_curves_against_eps_and_iterations_with_intervals(healthy):
    registry, run = healthy
    audit = audit_run(registry, run)
    (eps_curve,) = [c for c in audit.curves if c.kind == "eps"]
    assert (eps_curve.series, eps_curve.at) == ("pgd-100", "steps 100")
    assert [(p.x, p.accuracy, p.n) for p in eps_curve.points] == [(0.1, 85.0, 40), (0.2, 70.0, 40), (0.3, 50.0, 40),
                                                                    (0.6, 0.0, 40)]
    low, high = clopper_pearson(28, 40)
    assert eps_curve.points[1].low == pytest.approx(100 * low) and eps_curve.points[1].high == pytest.approx(100 * high)
    (steps_curve,) = [c for c in audit.curves if c.kind == "steps"]
    assert (steps_curve.series, steps_curve.at) == ("pgd", "eps 0.3")
    assert [(p.x, p.accuracy) for p in steps_curve.points] == [(10, 60.0), (20, 55.0), (50, 52.5), (100, 50.0)]
    assert audit.findings == []


def test_compare_draws_the_curves_in_the_terminal_and_as_png(healthy, tmp_path):
    registry, _ = healthy
    png = tmp_path / "curves.png"
    result = CliRunner().invoke(app, ["compare", "h", "--curves", "--png", str(png), "--runs-dir", str(registry.root)])
    assert result.exit_code == 0, result.output
    assert "robust accuracy % against eps" in result.output and "robust accuracy % against attack iterations" in result.output
    assert "0.2: 70.00 [53.5–83.4] n=40" in result.output and "audit: no finding" in result.output
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000
    data = json.loads(CliRunner().invoke(app, ["compare", "h", "--curves", "--json", "--runs-dir",
                                               str(registry.root)]).output)
    assert [c["kind"] for c in data["runs"][0]["curves"]] == ["eps", "steps"]


def test_the_audit_flags_rising_eps_no_zero_at_large_eps_and_autoattack_far_below_pgd(runs_root):
    registry = Registry(runs_root)
    run = _run(registry, "m", "advtrain", config={"eps": 0.3})
    for eps, robust in ((0.1, 20), (0.3, 33), (0.6, 30)):  # rises from 0.1 to 0.3, 75% left at twice the eps
        _store(registry, run, "pgd-100", range(robust), eps=eps)
    _store(registry, run, "aa", range(5), eps=0.3)  # 12.5% against PGD-100's 82.5%: masked
    findings = {f["code"]: f["message"] for f in audit_run(registry, run).findings}
    assert set(findings) == {"eps-up", "no-zero-at-large-eps", "aa-far-below-pgd"}
    assert findings["eps-up"].startswith("pgd-100: accuracy rises from 50.00% at eps 0.1 to 82.50% at eps 0.3")
    assert findings["no-zero-at-large-eps"].startswith("at eps 0.6 (2.0x the training eps) pgd-100 still leaves 75.00%")
    assert "70.00 points below pgd-100 (82.50%) on 40 shared examples" in findings["aa-far-below-pgd"]
    notes = build_comparison(registry, select_runs(registry, ["m"])).notes
    assert sum(n.startswith("audit m (") for n in notes) == 3


def test_eval_takes_an_eps_list_and_refuses_a_bad_one_in_one_line(healthy):
    registry, _ = healthy
    before = store_snapshot(registry.root)
    for value, says in (("0.1,abc", "error: --eps takes numbers in [0, 1], comma-separated"),
                        ("0.1,1.5", "error: --eps must be in [0, 1] (inputs are in [0, 1]), got 1.5")):
        proc = subprocess.run([sys.executable, "-m", "advtui", "eval", "h", "--eps", value, "--runs-dir",
                               str(registry.root)], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": "src"})
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith(says), proc.stderr
    assert store_snapshot(registry.root) == before


def test_curves_without_any_curve_is_one_line(runs_root):
    registry = Registry(runs_root)
    run = _run(registry, "one", "advtrain")
    _store(registry, run, "pgd-10", range(3))
    result = CliRunner().invoke(app, ["compare", "one", "--curves", "--runs-dir", str(registry.root)])
    assert result.exit_code != 0 and "no robustness curve yet" in str(result.exception)
