"""Checked downloads: stream a URL to a file, verify its SHA-256, and only then put it in place.

Nothing is downloaded at import or by default: :func:`download` fetches only the URL it is given (any
scheme that urllib opens, ``file://`` included, which the tests use). The real data sets are fetched by
hand (see data/README.md); these helpers are for archives whose checksum you know.
"""
from __future__ import annotations

import hashlib
import os
import re
from contextlib import closing
from pathlib import Path
from typing import Any, Callable

from ..fileio import atomic_write

__all__ = ["ChecksumError", "download", "verify", "file_sha256"]

_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ChecksumError(ValueError):
    """The SHA-256 of a file is not the expected one."""

    def __init__(self, source: str, expected: str, got: str) -> None:
        self.source, self.expected, self.got = source, expected, got
        super().__init__(f"SHA-256 mismatch for {source}: expected {expected}, got {got}")

    def __reduce__(self):
        return (type(self), (self.source, self.expected, self.got))


def _normalise(sha256: str) -> str:
    digest = str(sha256).strip().lower()
    if not _HEX64.match(digest):
        raise ValueError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}")
    return digest


def file_sha256(path: str | os.PathLike, chunk_size: int = _CHUNK) -> str:
    """The SHA-256 of a file, as 64 lower-case hexadecimal digits (read in chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: str | os.PathLike, sha256: str) -> bool:
    """True when ``path`` is a file whose SHA-256 is ``sha256`` (any case); False when it differs or the
    file does not exist. Raises ``ValueError`` if ``sha256`` is not 64 hexadecimal digits."""
    expected = _normalise(sha256)
    path = Path(path)
    if not path.is_file():
        return False
    return file_sha256(path) == expected


def _open(url: str, opener: Any, timeout: float):
    if opener is None:
        import urllib.request

        return urllib.request.urlopen(url, timeout=timeout)
    if hasattr(opener, "open"):  # a urllib.request.OpenerDirector
        return opener.open(url, timeout=timeout)
    return opener(url)


def download(url: str, dest: str | os.PathLike, sha256: str, *, opener: Callable[[str], Any] | Any = None,
             timeout: float = 60.0, chunk_size: int = _CHUNK) -> Path:
    """Fetch ``url`` to ``dest`` if ``dest`` is not already there with the SHA-256 ``sha256``.

    The body is streamed to a temporary file in ``dest``'s folder while it is hashed; on a match the file
    is renamed onto ``dest`` atomically, so ``dest`` never holds a partial or wrong file. On a mismatch
    the temporary file is removed and :class:`ChecksumError` (expected vs got) is raised; an existing
    ``dest`` is then left as it was. Any other error also removes the temporary file.

    Args:
        url: any URL urllib opens (``https://``, ``file://`` ...).
        dest: the final file path; its folder is created if needed.
        sha256: the expected SHA-256, 64 hexadecimal digits.
        opener: how to open ``url``: ``None`` for ``urllib.request.urlopen``, an object with
            ``.open(url, timeout=...)`` (a ``urllib.request.OpenerDirector``) or a callable
            ``opener(url)``; it returns a binary file-like object with ``read(n)``.
        timeout: socket timeout in seconds for the default opener.
        chunk_size: bytes read and hashed at a time.

    Returns:
        ``dest`` as a ``Path``.
    """
    expected = _normalise(sha256)
    dest = Path(dest)
    if verify(dest, expected):
        return dest
    def fetch(out) -> None:   # hash while streaming; a mismatch raises before the rename
        h = hashlib.sha256()
        with closing(_open(url, opener, timeout)) as src:
            for block in iter(lambda: src.read(chunk_size), b""):
                h.update(block)
                out.write(block)
        got = h.hexdigest()
        if got != expected:
            raise ChecksumError(url, expected, got)

    atomic_write(dest, fetch)
    return dest
