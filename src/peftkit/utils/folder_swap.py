"""Replacing a whole folder at once: its path names the complete old tree or the complete new one.

`replace_folder` has the new content written into a fresh sibling folder (the staging folder),
completes it with everything of the old folder that the new content does not replace (hard links: no
data is copied), fsyncs it, and exchanges the two paths in one atomic rename
(`renameat2(RENAME_EXCHANGE)` on Linux, `renamex_np(RENAME_SWAP)` on macOS). The old tree, now under
the staging name, is then deleted. A process killed at any point leaves the folder as the old tree or
the new one, plus at most a staging folder beside it that the next writer removes.

Writers of one folder take turns (`folder_lock`). Files another program adds to or replaces in the
folder while the save runs are moved into the new tree before the old one is deleted.

Where no exchange is possible (Windows, filesystems without it, a folder that is a mount point or holds
the current directory, special files, unreadable sub-folders, or more than `MAX_CARRIED_ENTRIES` entries
to link), `replace_folder` lets the caller write into the folder itself instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Callable

from .atomic_io import fsync_dir, is_stale_temp_name, remove_stale_temp_files
from .folder_lock import locked_folder, try_lock

# Linking more entries than this (a save into a project folder, a home directory) is a sign the folder
# is not an adapter folder: it is written file by file instead.
MAX_CARRIED_ENTRIES = 10_000

_STAGING_MARK = ".peftkit-save-"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h
_RENAME_SWAP = 2  # macOS sys/stdio.h
# errors meaning "this system or filesystem cannot exchange these paths" rather than a failure
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EBUSY}


class _CannotSwap(Exception):
    """The folder cannot be replaced as a whole; the caller writes into it instead."""


def _exchange_function() -> Callable[[bytes, bytes], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        fn = libc.renameat2
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        return lambda a, b: fn(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE)
    if sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        fn = libc.renamex_np
        fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        return lambda a, b: fn(a, b, _RENAME_SWAP)
    return None


_EXCHANGE = _exchange_function() if os.name == "posix" else None


def exchange_paths(a: str, b: str) -> bool:
    """Atomically swap what the existing paths `a` and `b` name. False where it is not possible."""
    if _EXCHANGE is None:
        return False
    if _EXCHANGE(os.fsencode(a), os.fsencode(b)) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), a, None, b)


def folder_identity(path: str) -> tuple[int, int, int, int] | None:
    """What changes when `path` is replaced or an entry in it is added, removed or renamed (None when it
    does not exist): readers compare it before and after reading to detect a concurrent save."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns


def _staging_pattern(target: str) -> re.Pattern[str]:
    name = re.escape(os.path.basename(target))
    return re.compile(rf"^\.{name}{re.escape(_STAGING_MARK)}[0-9a-f]{{16}}$")


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def remove_stale_staging(target: str) -> None:
    """Delete the staging folders (new trees never swapped in, or old trees swapped out) that killed saves
    of `target` left beside it. Only call while holding `target`'s lock."""
    pattern = _staging_pattern(target)
    with contextlib.suppress(OSError):
        for entry in os.scandir(os.path.dirname(target)):
            if pattern.match(entry.name) and entry.is_dir(follow_symlinks=False):
                _remove_tree(entry.path)


def _swappable(target: str) -> bool:
    if _EXCHANGE is None or os.path.ismount(target):
        return False
    try:
        cwd = os.path.realpath(os.getcwd())
    except OSError:
        return True
    # the process would be left in the deleted old tree
    return os.path.commonpath([cwd, target]) != target


def _make_staging(target: str) -> str | None:
    parent, name = os.path.split(target)
    try:
        path = os.path.join(parent, f".{name}{_STAGING_MARK}{secrets.token_hex(8)}")
        os.mkdir(path, 0o777)  # the umask applies, as to any folder the user creates
    except OSError:  # a read-only parent, ...: write into the folder itself
        return None
    return path


def _files_below(root: str) -> set[str]:
    """Relative paths (with "/") of every non-directory entry under `root`."""
    found = set()
    for folder, _, files in os.walk(root):
        rel = os.path.relpath(folder, root).replace(os.sep, "/")
        found.update(name if rel == "." else f"{rel}/{name}" for name in files)
    return found


def _inode(path: str) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino


def _is_leftover(rel: str, name: str) -> bool:
    """A killed save's temporary file: only in the folder and its adapter sub-folders (one level down),
    where saves write; deeper down, a name like that is the user's."""
    return rel.count("/") <= 1 and is_stale_temp_name(name)


def _take_permissions(source: os.stat_result, folder: str) -> None:
    """Give `folder` the mode (and, where allowed, the group) of the folder it stands in for."""
    os.chmod(folder, stat.S_IMODE(source.st_mode))
    if os.stat(folder).st_gid != source.st_gid:
        with contextlib.suppress(OSError):  # only to a group the user belongs to
            os.chown(folder, -1, source.st_gid)


def _carry(old: str, new: str, rel: str, keep: Callable[[str], bool], carried: dict) -> None:
    """Link every entry of `old` that `new` lacks and `keep` accepts into `new` (directories recreated)."""
    for entry in os.scandir(old):
        path = f"{rel}{entry.name}"
        if _is_leftover(rel, entry.name) or not keep(path):
            continue
        dst = os.path.join(new, entry.name)
        if entry.is_dir(follow_symlinks=False):
            written_into = os.path.lexists(dst)
            if not written_into:
                os.mkdir(dst)
            if os.path.isdir(dst) and not os.path.islink(dst):  # else the new content replaced it
                _carry(entry.path, dst, f"{path}/", keep, carried)
                if written_into:  # an adapter's sub-folder: its permissions, a new modification time
                    _take_permissions(entry.stat(follow_symlinks=False), dst)
                else:  # a folder of the user's, unchanged: as it was
                    shutil.copystat(entry.path, dst, follow_symlinks=False)
            continue
        if os.path.lexists(dst):
            continue  # the new content has its own version
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), dst)
        elif entry.is_file(follow_symlinks=False):
            os.link(entry.path, dst, follow_symlinks=False)
        else:
            raise _CannotSwap(f"{entry.path} is neither a file, a link nor a folder")
        carried[path] = _inode(entry.path)
        if len(carried) > MAX_CARRIED_ENTRIES:
            raise _CannotSwap(f"more than {MAX_CARRIED_ENTRIES} entries to carry over")


def _reconcile(
    old: str, new: str, rel: str, keep: Callable[[str], bool], carried: dict, written: set[str]
) -> None:
    """After the swap: move into `new` what another program added to or replaced in the old tree after it
    was linked (best effort, entry by entry), so that deleting the old tree loses nothing."""
    for entry in os.scandir(old):
        path = f"{rel}{entry.name}"
        if _is_leftover(rel, entry.name) or path in written or not keep(path):
            continue
        dst = os.path.join(new, entry.name)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                if not os.path.lexists(dst):
                    os.rename(entry.path, dst)
                elif os.path.isdir(dst) and not os.path.islink(dst):
                    _reconcile(entry.path, dst, f"{path}/", keep, carried, written)
            elif path in carried and carried[path] != _inode(entry.path):
                os.replace(entry.path, dst)  # replaced while the save ran
            elif path not in carried and not os.path.lexists(dst):
                os.rename(entry.path, dst)  # added while the save ran


def _fsync_tree(root: str) -> None:
    for folder, _, _ in os.walk(root):
        fsync_dir(folder)


def _swap_in(target: str, staging: str, write: Callable[[str], None], keep: Callable[[str], bool]) -> bool:
    """Write into `staging`, complete it from `target` and exchange them; False when that is impossible."""
    fd = os.open(staging, os.O_RDONLY)
    try:
        # lock the staging folder: once swapped in, it is the folder the next writer waits on
        try_lock(fd)
        write(staging)
        written = _files_below(staging)
        carried: dict[str, tuple[int, int]] = {}
        try:
            _carry(target, staging, "", keep, carried)
            _take_permissions(os.stat(target), staging)
        except (OSError, _CannotSwap):
            return False
        _fsync_tree(staging)
        if not exchange_paths(target, staging):
            return False
        fsync_dir(os.path.dirname(target))
        # `staging` now names the old tree
        _reconcile(staging, target, "", keep, carried, written)
        _remove_tree(staging)
        return True
    finally:
        os.close(fd)


def replace_folder(target: str, write: Callable[[str], None], keep: Callable[[str], bool]) -> bool:
    """Give folder `target` the files `write(root)` writes into `root`, plus every entry of the old folder
    that `write` did not write and `keep(relative_path)` accepts (paths with "/"), all at once.

    Returns True when the folder was replaced as a whole; False when that was not possible and
    `write(target)` wrote into the folder itself (the caller's own order of writes then decides what an
    interruption leaves). Stale files of killed saves are removed either way.
    """
    target = os.path.realpath(target)
    os.makedirs(target, exist_ok=True)
    with locked_folder(target) as locked:
        if locked:
            remove_stale_staging(target)
        staging = _make_staging(target) if _swappable(target) else None
        if staging is not None:
            try:
                swapped = _swap_in(target, staging, write, keep)
            finally:
                if os.path.isdir(staging):  # not swapped in (or the old tree, if deleting it failed)
                    _remove_tree(staging)
            if swapped:
                return True
        if locked:  # the folder and its adapter sub-folders
            remove_stale_temp_files(target)
            with contextlib.suppress(OSError):
                for entry in os.scandir(target):
                    if entry.is_dir(follow_symlinks=False):
                        remove_stale_temp_files(entry.path)
        write(target)
        return False
