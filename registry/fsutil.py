"""Crash-safe file writes, shared by every module that persists something.

`atomic_write` is the one way dagseal replaces a file: the data goes to a temp file (created mode
0600 by mkstemp, so a private key is never briefly world-readable) in the same filesystem, is
fsynced, given its final mode, and renamed over the target; the folder is then fsynced so the
rename survives a power loss. Readers see the old file or the new one, never half of either, and
a file that is a hard link (e.g. into uv's cache) is replaced, never written through.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or create inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes, *, mode: int = 0o644,
                 tmp_dir: str | os.PathLike | None = None, durable: bool = True) -> None:
    """Replace `path` with `data` atomically; `tmp_dir` must be on the same filesystem.

    `durable=False` skips the fsyncs, for scratch trees that are rebuilt after a crash anyway.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)
