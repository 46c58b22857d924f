"""Atomic file replacement: a reader sees the old file or the new one, never half of one.

The new content goes to a temporary file in the same folder (so the rename stays on one
filesystem), is flushed and fsynced, and is renamed over the target. With ``backup`` the file
being replaced is first kept as ``NAME.bak`` (a hard link: it costs no copy), so the last good
copy survives a bad write. No torch here: the store, the reports and the checkpoints share it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

BACKUP_SUFFIX = ".bak"


def current_umask() -> int:
    """This process's umask, read without changing it where the system says it (Linux 4.7+)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_GUARD:  # elsewhere: set and restore it (a moment another thread must not create files in)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_GUARD = threading.Lock()


def backup_path(path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(path)}{BACKUP_SUFFIX}")


def keep_backup(path: str | os.PathLike) -> bool:
    """Keep the current ``path`` as ``path.bak`` (atomically); False when there is no file."""
    path = os.fspath(path)
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp.bak")
    try:
        try:
            os.link(path, tmp)  # a hard link costs nothing
        except FileNotFoundError:
            return False
        except OSError:  # a filesystem without hard links
            shutil.copyfile(path, tmp)
        os.replace(tmp, f"{path}{BACKUP_SUFFIX}")
        return True
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, fsync: bool = True, backup: bool = False,
                encoding: str | None = None) -> Iterator[IO[Any]]:
    """Write ``path`` through a file object; it replaces ``path`` only if the block succeeds.

    ``mode`` is "wb" or "w" (text, utf-8 unless ``encoding``). ``fsync=False`` skips the flush
    to disk (for bulk writes followed by one ``os.sync()``).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        # mkstemp creates the file 0600 whatever the umask; the file it becomes is created like
        # any other (0666 less the umask), so a runs folder shared by a group stays shared.
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        if backup:
            keep_backup(path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True, backup: bool = False) -> None:
    with atomic_open(path, "wb", fsync=fsync, backup=backup) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = True, backup: bool = False,
                      encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding), fsync=fsync, backup=backup)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, fsync: bool = True, backup: bool = False,
                      indent: int | None = None) -> None:
    """``obj`` as JSON (compact unless ``indent``)."""
    separators = (",", ":") if indent is None else None
    atomic_write_bytes(path, json.dumps(obj, separators=separators, indent=indent).encode("utf-8"),
                       fsync=fsync, backup=backup)
