"""Fixtures of the dashboard tests (helpers live in tui_support.py)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tui_support import build_fixed_runs


@pytest.fixture
def utc(monkeypatch):
    """Dates in the detail screen are local time: pin the zone."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture(scope="session")
def _fixed_runs_cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fixed") / "runs"
    build_fixed_runs(root)
    return root


@pytest.fixture
def fixed_runs(_fixed_runs_cache, tmp_path, utc) -> Path:
    """A private copy of the fixed runs directory (see tui_support.build_fixed_runs): tests may
    change it. copytree keeps the files' times, which the detail screen shows."""
    root = tmp_path / "runs"
    shutil.copytree(_fixed_runs_cache, root)
    return root
