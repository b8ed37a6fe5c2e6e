"""peftkit's AVX2 kernel libraries: the platform they need, and each built and declared once per process.

A library here is a C source beside its Python module, compiled by `native_build` with AVX2 and FMA
(which AVX-512 machines run too) and with torch's OpenMP runtime where torch has one, so its threads are
the ones torch already started (`torch.get_num_threads()` is passed to every call), else one thread.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from . import native_build

FLAGS = ["-O3", "-mavx2", "-mfma", "-std=c11", "-shared", "-fPIC"]


def platform_problem() -> str:
    """Why this machine cannot run the kernels whatever its compiler ('' where it can)."""
    if not native_build.is_linux_x86():
        return "the native kernels are built on Linux x86-64 only"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return "this CPU has no AVX2"
    return ""


class KernelLibrary:
    """The library built from `source`, its functions given `signatures` (argument types; each returns an
    int status), built and loaded on first use (see `native_build`), once per process."""

    def __init__(self, source: Path, signatures: dict[str, list]) -> None:
        self.source, self.signatures = source, signatures

    @functools.cached_property
    def _loaded(self) -> native_build.NativeLibrary:
        problem = platform_problem()
        if problem:
            return native_build.NativeLibrary(None, problem)
        openmp = ["-fopenmp"] if "parallel backend: OpenMP" in torch.__config__.parallel_info() else []
        library = native_build.load(self.source, FLAGS + openmp)
        if library.handle is not None:
            for name, arguments in self.signatures.items():
                function = getattr(library.handle, name)
                function.argtypes, function.restype = arguments, ctypes.c_int
        return library

    @property
    def handle(self) -> ctypes.CDLL | None:
        """The loaded library (None where it is unavailable)."""
        return self._loaded.handle

    def available(self) -> bool:
        """Whether the kernels are built and loaded on this machine (builds them on first call)."""
        return self._loaded.handle is not None

    def unavailable_reason(self) -> str:
        """Why `available()` is False ('' when it is True)."""
        return self._loaded.unavailable_reason
