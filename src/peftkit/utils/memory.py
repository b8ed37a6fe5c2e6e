"""Keep freed memory in the process for reuse (glibc's malloc), instead of page-faulting it in again.

glibc's malloc serves each large block (above a threshold that adapts between 128 KiB and 32 MiB) with
a fresh `mmap` and returns it to the kernel when freed. A CPU training step frees and allocates such
tensors every step: the logits and their gradient (tokens x vocabulary floats: 200 MB for 1024 tokens of
a 49,152-token vocabulary), attention scores, optimizer temporaries. Each comes back as new pages, zeroed
and faulted in one by one. On a SmolLM2-shaped model that was 196K page faults and ~1.9 s of system time
in a ~6.5 s step (bench/RESULTS.md, 2026-12-07). With `mmap` off and trimming off, freed blocks stay in
the heap and the next step reuses them: no faults, ~5.0 s per step.

It is a setting of the whole process, so peftkit never applies it on its own: `peftkit train
--keep-freed-memory` does, or a training script calls `keep_freed_memory()` first. The cost: the process
keeps its peak heap size until it exits. The same from outside Python:
`GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184`.
"""

from __future__ import annotations

import ctypes

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int: trimming only past 2 GiB of free heap top


def keep_freed_memory() -> None:
    """Have glibc's malloc keep freed memory for reuse: no `mmap` for large blocks, no trimming.

    Raises OSError where the process's C library is not glibc (no `mallopt`: musl, macOS, Windows)."""
    try:
        libc = ctypes.CDLL(None)  # the C library the process runs on
    except (OSError, TypeError):  # Windows: no handle to the process's own symbols
        libc = None
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        raise OSError(
            "keep_freed_memory needs glibc's malloc (Linux with glibc): this process's C library has no "
            "mallopt. Leave the option off; training works the same, with more page faults."
        )
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if not (mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)):
        raise OSError("glibc's mallopt refused the settings (M_MMAP_MAX 0, M_TRIM_THRESHOLD 2 GiB).")
