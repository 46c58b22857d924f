"""Moved to ``advtui.core.paths``; this name stays for code written against it (the registry)."""

from advtui.core.paths import (  # noqa: F401
    DATA_ENV, RUNS_ENV, check_safe_name, data_root, run_dir, runs_dir,
)
