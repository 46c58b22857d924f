"""Fixtures of the dashboard tests (helpers live in tui_support.py)."""

from __future__ import annotations

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


@pytest.fixture
def fixed_runs(tmp_path, utc) -> Path:
    """The fixed runs directory of the snapshot tests (see tui_support.build_fixed_runs)."""
    root = tmp_path / "runs"
    build_fixed_runs(root)
    return root
