"""peftkit's AVX2 kernel libraries: the platform they need, and each built and declared once per process.

A library here is a C source beside its Python module, compiled by `native_build` with AVX2 and FMA
(which AVX-512 machines run too) and with torch's OpenMP runtime where torch has one, so its threads are
the ones torch already started (`torch.get_num_threads()` is passed to every call), else one thread.
"""

from __future__ import annotations

import ctypes
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


def load(source: Path, signatures: dict[str, list]) -> native_build.NativeLibrary:
    """The library built from `source`, its functions given `signatures` (argument types; each returns
    an int status), or None and the reason (see `native_build`). Callers cache the result."""
    problem = platform_problem()
    if problem:
        return native_build.NativeLibrary(None, problem)
    openmp = ["-fopenmp"] if "parallel backend: OpenMP" in torch.__config__.parallel_info() else []
    library = native_build.load(source, FLAGS + openmp)
    if library.handle is not None:
        for name, arguments in signatures.items():
            function = getattr(library.handle, name)
            function.argtypes, function.restype = arguments, ctypes.c_int
    return library
