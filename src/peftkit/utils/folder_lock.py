"""Writers of one folder take turns: an advisory `flock` on the folder itself.

The lock lives on the folder's inode, so nothing is left on disk, a writer killed with SIGKILL releases
it (the kernel closes its descriptors), and writers of different folders never wait for each other. A
save replaces the folder by an exchange of paths (`folder_swap`), which puts a new inode under the
name: a writer that waited on the old inode notices, and locks the folder that is there now.

Where `fcntl` or a filesystem's locks are missing (Windows, some network filesystems), writers do not
take turns; each save is still complete on its own, and the last one to finish wins.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from .warnings import FolderLockedError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

# How long a save waits for another process saving into the same folder (saves take seconds; a writer
# stuck much longer is likely hung on its filesystem).
LOCK_TIMEOUT_S = 600.0


def try_lock(fd: int) -> bool | None:
    """Take the exclusive lock on open descriptor `fd` without waiting: True when taken, False when
    another holder has it, None when the filesystem offers no locks."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EBADF on filesystems that emulate flock with byte-range locks, ...
        return None
    return True


def _is_current(fd: int, folder: str) -> bool:
    try:
        now = os.stat(folder)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def _acquire(folder: str, timeout: float) -> int | None:
    """An open descriptor of `folder` holding its lock, or None when locks are unavailable."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:  # e.g. a folder we may write but not read
            return None
        taken = try_lock(fd)
        if taken and _is_current(fd, folder):
            return fd
        os.close(fd)
        if taken is None:
            return None
        if not taken and time.monotonic() > deadline:
            raise FolderLockedError(
                f"Another process has been saving into '{folder}' for over {timeout:.0f} s. Wait for it to "
                "finish (or stop it), or save into another folder."
            )
        if not taken:  # a swapped folder is retried at once: its replacement is usually free
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


@contextlib.contextmanager
def locked_folder(folder: str, timeout: float | None = None) -> Iterator[bool]:
    """Hold the save lock of existing folder `folder`; yields whether a lock is held (False where the
    platform or filesystem has none). Waits up to `timeout` seconds (default `LOCK_TIMEOUT_S`) for
    another writer, then raises `FolderLockedError`."""
    fd = _acquire(folder, LOCK_TIMEOUT_S if timeout is None else timeout)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock
