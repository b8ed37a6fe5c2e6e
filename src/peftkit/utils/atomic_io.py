"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one.

Each write goes to a temporary file in the same folder (same filesystem), is flushed and fsync'ed, and
then renamed over the target with `os.replace`, which is atomic on POSIX and Windows. `staged_file`
splits "write the new content" from "make it visible", so a caller can do other steps (e.g. invalidate
a companion file) only once the new content is known to be complete.

Temporary files are created with mode 0o666 and the process umask applied, as `open(path, "w")` would
create the file itself (`tempfile.mkstemp` makes them 0o600, which the rename would carry over to the
adapter files). Their names, `.<file name>.<random>.tmp`, let the next save recognise what a killed save
left behind (`is_stale_temp_name`); loads never read them.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Iterator

from .constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME

# the files saves write through `staged_file`; a temporary file of one of them is ours to clean up
_STAGED_NAMES = (CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME, "README.md")
# ours, and the one safetensors' `save_file` writes before renaming it over our temporary file (Rust's
# `tempfile` crate: ".tmp" and six random characters)
_STALE_TEMP = re.compile(
    r"^\.(?:" + "|".join(re.escape(n) for n in _STAGED_NAMES) + r")\..+\.tmp$|^\.tmp[A-Za-z0-9]{6}$"
)


def is_stale_temp_name(name: str) -> bool:
    """Whether `name` is a temporary file a save of an adapter file leaves behind when it is killed."""
    return _STALE_TEMP.match(name) is not None


def remove_stale_temp_files(folder: str) -> None:
    """Delete the temporary files killed saves left in `folder` (callers hold the folder's save lock)."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(folder):
            if is_stale_temp_name(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(entry.path)


def create_temp_file(path: str) -> str:
    """Create an empty temporary file beside `path` (mode 0o666 less the umask) and return its name."""
    folder, name = os.path.split(os.path.abspath(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(8)}.tmp")
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:  # 64 random bits: only a collision with a leftover file
            continue
        return tmp


def fsync_dir(folder: str) -> None:
    """Persist the entries of `folder` (renames, links) on POSIX (a no-op where folders cannot be opened,
    e.g. Windows)."""
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
        self.tmp = create_temp_file(path)
        # the mode the umask gave it: a writer that replaces the file (safetensors writes its own 0o600
        # temporary file and renames it) must not decide who can read the adapter
        self.mode = os.stat(self.tmp).st_mode
        self.committed = False

    def commit(self) -> None:
        if os.stat(self.tmp).st_mode != self.mode:
            os.chmod(self.tmp, stat.S_IMODE(self.mode))
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        self.committed = True
        fsync_dir(self.folder)

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
