"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one.

Each write goes to a temporary file in the same folder (same filesystem), is flushed and fsync'ed, and
then renamed over the target with `os.replace`, which is atomic on POSIX and Windows. `staged_file`
splits "write the new content" from "make it visible", so a caller can do other steps (e.g. invalidate
a companion file) only once the new content is known to be complete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator


def _fsync_dir(folder: str) -> None:
    """Persist a rename on POSIX (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class StagedFile:
    """A temporary file beside `path`; `commit()` renames it over `path` (after an fsync)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.folder = os.path.dirname(os.path.abspath(path))
        fd, self.tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=self.folder)
        os.close(fd)
        self.committed = False

    def commit(self) -> None:
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        self.committed = True
        _fsync_dir(self.folder)

    def discard(self) -> None:
        if not self.committed:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.tmp)


@contextlib.contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[StagedFile]:
    """Yield a `StagedFile`; whatever was not committed when the block ends (or raises) is removed."""
    staged = StagedFile(os.fspath(path))
    try:
        yield staged
    finally:
        staged.discard()


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed."""
    with staged_file(path) as staged:
        yield staged.tmp
        staged.commit()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_target(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
