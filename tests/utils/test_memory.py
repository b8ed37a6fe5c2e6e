"""`peftkit.utils.memory.keep_freed_memory`: freed large blocks are reused, not page-faulted in again.

Measured in a child process (the setting is process-wide): the minor page faults of allocating and
filling a 64 MiB tensor ten times, with and without the setting."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

CHILD = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from peftkit.utils.memory import keep_freed_memory
    keep_freed_memory()
def fill():
    block = torch.empty(16 * 2**20)  # 64 MiB: above glibc's largest mmap threshold
    block.fill_(1.0)                 # touches every page
    del block
for _ in range(4):  # the heap settles within a few (a block may land past a small allocation made meanwhile)
    fill()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    fill()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


@glibc_only
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    pages_per_block = 16 * 2**20 * 4 // 4096
    # default malloc: each 64 MiB block is a fresh mapping, every page faulted in (huge pages would
    # fault less, hence half)
    assert faults("default") > 10 * pages_per_block // 2
    # kept: the blocks already faulted in serve the ten (at most one more block's worth while it settles)
    assert faults("keep") < 1.25 * pages_per_block


def test_without_mallopt_it_says_so(monkeypatch):
    """A C library without `mallopt` (musl, macOS) or none to open (Windows): an OSError naming it."""
    from peftkit.utils import memory

    def no_process_library(name):
        raise TypeError("no handle to the process's own symbols")

    monkeypatch.setattr(memory.ctypes, "CDLL", no_process_library)
    with pytest.raises(OSError, match="needs glibc's malloc"):
        memory.keep_freed_memory()
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: object())  # opens, but has no mallopt
    with pytest.raises(OSError, match="has no mallopt"):
        memory.keep_freed_memory()
