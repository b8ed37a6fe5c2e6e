"""Build a C source shipped with peftkit into a shared library, once per machine, and load it with ctypes.

Native kernels are an acceleration only: every caller keeps a torch path, so a machine without a C
compiler, another platform, or `PEFTKIT_NATIVE_KERNELS=0` loses speed, never a feature. `load` returns
None there and `NativeLibrary.unavailable_reason` says why.

The library is cached in `$XDG_CACHE_HOME/peftkit/kernels` (default `~/.cache/peftkit/kernels`) under a
name holding the hash of the source, the flags and the compiler's version, so an edited source or another
compiler builds anew. It is compiled into a temporary file in that folder and renamed into place, so a
process killed mid-build never leaves a partial library under the final name; two processes building at
once each rename a whole file. Since a cached library is executed, the folder must belong to this user
and be writable by no one else (else nothing is loaded).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DISABLE_VARIABLE = "PEFTKIT_NATIVE_KERNELS"  # "0": use the torch paths only


@dataclass
class NativeLibrary:
    """A loaded library (`handle`), or None with the reason in `unavailable_reason`."""

    handle: ctypes.CDLL | None
    unavailable_reason: str = ""


def cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "peftkit" / "kernels"


def load(source: Path, flags: list[str]) -> NativeLibrary:
    """The library built from `source` with `flags` (cached, see the module docstring)."""
    if os.environ.get(DISABLE_VARIABLE, "1") == "0":
        return NativeLibrary(None, f"{DISABLE_VARIABLE}=0")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return NativeLibrary(None, "no C compiler found (set CC, or install gcc)")
    folder = cache_folder()
    problem = _unsafe_folder_problem(folder)
    if problem:
        return NativeLibrary(None, problem)
    version = _compiler_version(compiler)
    if version is None:
        return NativeLibrary(None, f"the C compiler {compiler!r} does not run")
    key = hashlib.sha256(source.read_bytes() + "\0".join([*flags, version]).encode()).hexdigest()[:20]
    target = folder / f"{source.stem}-{key}.so"
    if target.exists():
        try:
            return NativeLibrary(ctypes.CDLL(str(target)))
        except OSError:  # cut short by a machine crash: built again below
            with contextlib.suppress(OSError):
                target.unlink()
    error = _compile(compiler, source, flags, target)
    if error:
        return NativeLibrary(None, error)
    try:
        return NativeLibrary(ctypes.CDLL(str(target)))
    except OSError as exc:
        return NativeLibrary(None, f"{target} does not load: {exc}")


def _unsafe_folder_problem(folder: Path) -> str:
    """Creates the cache folder (mode 700); a reason to refuse it, or ''."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
    except OSError as exc:
        return f"the kernel cache {folder} cannot be created: {exc}"
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"the kernel cache {folder} belongs to another user"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"the kernel cache {folder} is writable by others (chmod 700 it)"
    return ""


def _compiler_version(compiler: str) -> str | None:
    try:
        done = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


_STALE_SECONDS = 3600  # a partial file this old is a killed build's (a build times out after 300 s)


def _compile(compiler: str, source: Path, flags: list[str], target: Path) -> str:
    """Compiles into a temporary file next to `target`, then renames it: '' or the error."""
    _remove_stale_partials(target.parent)
    handle, partial = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".so.partial", dir=target.parent)
    os.close(handle)
    try:
        done = subprocess.run(
            [compiler, *flags, "-o", partial, str(source)], capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            return f"compiling {source.name} failed: {done.stderr.strip()[-2000:]}"
        with open(partial, "rb") as written:  # on disk before its name says it is whole
            os.fsync(written.fileno())
        os.replace(partial, target)
        return ""
    except (OSError, subprocess.SubprocessError) as exc:
        return f"compiling {source.name} failed: {exc}"
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _remove_stale_partials(folder: Path) -> None:
    now = time.time()
    for partial in folder.glob(".*.so.partial"):
        with contextlib.suppress(OSError):  # another process may remove it first
            if now - partial.stat().st_mtime > _STALE_SECONDS:
                partial.unlink()


def is_linux_x86() -> bool:
    """Whether this is Linux on x86-64, the one platform whose kernels peftkit ships."""
    return sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")
