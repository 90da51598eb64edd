"""Files that are never left half-written, and a lock so that two processes do not train the same run.

:func:`atomic_write` writes to a uniquely named temporary file in the target's folder, flushes it to disk
and renames it over the target (``os.replace`` is atomic on POSIX and Windows): a crash, a full disk or a
second writer at any moment leaves either the old file or the new one, never a mixture or an empty file.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, IO, Iterator

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, one runner per grid
    fcntl = None  # type: ignore[assignment]


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None],
                 keep_previous: str | os.PathLike | None = None) -> Path:
    """Call ``write(handle)`` on a temporary file next to ``path`` and rename it onto ``path``; with
    ``keep_previous``, the file it replaces is first renamed there (a fallback copy)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous is not None and path.is_file():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


class Busy(RuntimeError):
    """Another process holds the lock."""


@contextlib.contextmanager
def exclusive(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive, non-blocking advisory lock on ``path`` (created if missing) for the block;
    raise :class:`Busy` at once if another process holds it. The lock ends with the process, so a killed
    runner never leaves a stale lock behind. (Without ``fcntl``, on Windows, nothing is locked.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Busy(f"{path} is locked by another process") from None
        try:
            yield path
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def is_busy(path: str | os.PathLike) -> bool:
    """True if another process holds the lock on ``path`` now (a missing file is not busy)."""
    if not Path(path).is_file():
        return False
    try:
        with exclusive(path):
            return False
    except Busy:
        return True
