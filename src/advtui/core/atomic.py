"""Atomic file replacement: a reader sees the old file or the new one, never half of one.

The new content goes to a temporary file in the same folder (so the rename stays on one
filesystem), is flushed and fsynced, and is renamed over the target. With ``backup`` the file
being replaced is first kept as ``NAME.bak`` (a hard link: it costs no copy), so the last good
copy survives a bad write. No torch here: the store, the reports and the checkpoints share it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from advtui.core.errors import UnsafePathError

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


def _refused_link(path: str | os.PathLike, exc: OSError) -> OSError:
    if exc.errno == errno.ELOOP:  # what O_NOFOLLOW says of a link at the last component
        return UnsafePathError(errno.ELOOP, f"{os.fspath(path)} is a symbolic link: it is never written or read "
                                            "through; remove the link (the run recreates the file)")
    return exc


def open_append(path: str | os.PathLike, text: bool = False) -> IO[Any]:
    """``path`` opened to append to it (created 0666 less the umask when missing), never
    through a symbolic link planted at its name: UnsafePathError then. Each write is one
    O_APPEND write, so concurrent writers of one stream never interleave within a line."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise _refused_link(path, exc) from None
    if text:
        return os.fdopen(fd, "a", encoding="utf-8", buffering=1)  # line-buffered: tailers see each line at once
    return os.fdopen(fd, "ab")


def atomic_copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy ``source`` over ``target`` atomically: a reader sees the old target or the whole
    copy. Neither name is followed if it is a symbolic link: the rename replaces a link at
    ``target`` itself, so a link planted there never redirects the write."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise _refused_link(source, exc) from None
    with os.fdopen(fd, "rb") as src, atomic_open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def remove_stale_temporaries(folder: str | os.PathLike, names: tuple[str, ...]) -> list[str]:
    """Remove the temporary files ``atomic_open`` left for ``names`` in ``folder`` (named
    ``.NAME.XXXXXXXX.tmp`` by mkstemp) when its process was killed mid-write; returns their
    names. Call it only while no other process can be writing those files (a run's process,
    once its record says it is the one running the run): a temporary in use would go."""
    patterns = [re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.tmp") for name in names]
    removed: list[str] = []
    try:
        entries = list(os.scandir(os.fspath(folder)))
    except OSError:
        return removed
    for entry in entries:
        if entry.is_file(follow_symlinks=False) and any(p.fullmatch(entry.name) for p in patterns):
            try:
                os.unlink(entry.path)
                removed.append(entry.name)
            except OSError:
                pass  # gone meanwhile, or not ours to remove: it costs disk space only
    return removed
