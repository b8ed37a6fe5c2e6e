"""Building native kernels: built once and reused, a failed or killed build leaves no library behind, and
every refusal says why."""

import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from peftkit.utils import native_build

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")

FLAGS = ["-O2", "-shared", "-fPIC"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv(native_build.DISABLE_VARIABLE, raising=False)
    return tmp_path / "cache" / "peftkit" / "kernels"


def _source(folder: Path, value: int) -> Path:
    source = folder / "answer.c"
    source.write_text(f"int answer(void) {{ return {value}; }}\n")
    return source


def _compiler(folder: Path, compile_step: str) -> str:
    """A `cc` that reports the real compiler's version and runs `compile_step` (a shell line; "$out" is
    the file it was asked to write) instead of compiling."""
    script = folder / "fake-cc"
    script.write_text(
        textwrap.dedent(f"""\
            #!/bin/sh
            if [ "$1" = "--version" ]; then exec cc --version; fi
            out=""; prev=""
            for arg in "$@"; do [ "$prev" = "-o" ] && out="$arg"; prev="$arg"; done
            {compile_step}
            """)
    )
    script.chmod(0o755)
    return str(script)


def test_builds_once_and_reuses_the_library(tmp_path, cache, monkeypatch):
    source = _source(tmp_path, 42)
    assert native_build.load(source, FLAGS).handle.answer() == 42
    assert [path.suffix for path in cache.iterdir()] == [".so"]
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    monkeypatch.setenv("CC", _compiler(tmp_path, "exit 1"))  # a rebuild would fail now
    assert native_build.load(source, FLAGS).handle.answer() == 42
    _source(tmp_path, 43)  # an edited source builds anew: with this compiler, it cannot
    library = native_build.load(source, FLAGS)
    assert library.handle is None and "compiling answer.c failed" in library.unavailable_reason


_LOAD_IN_CHILD = "from pathlib import Path; from peftkit.utils import native_build; native_build.load(Path"


def test_a_build_killed_midway_leaves_no_library(tmp_path, cache, monkeypatch):
    """kill -9 while the compiler writes its output: the final name never holds the partial file, the
    next load builds a working library, and a build clears partial files left over an hour ago."""
    source = _source(tmp_path, 7)
    slow = _compiler(tmp_path, 'printf "half a libr" > "$out"; sleep 60')
    child = subprocess.Popen(
        [sys.executable, "-c", f"{_LOAD_IN_CHILD}({str(source)!r}), {FLAGS!r})"],
        env={**os.environ, "CC": slow, "PYTHONPATH": os.pathsep.join(sys.path)},
        start_new_session=True,  # its own process group: the kill takes the compiler too
    )
    deadline = time.monotonic() + 60
    while not any(path.stat().st_size for path in cache.glob("*.partial")):
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert not list(cache.glob("*.so"))
    (partial,) = cache.glob("*.partial")
    os.utime(partial, (time.time() - 7200, time.time() - 7200))  # the next build clears it, once old
    assert native_build.load(source, FLAGS).handle.answer() == 7
    assert not partial.exists()


def test_a_cached_library_that_does_not_load_is_built_again(tmp_path, cache):
    """A file under the final name that is not a library (a machine crash can leave one) is rebuilt. The
    first build runs in a child process: this one must not have the file mapped when it is replaced."""
    source = _source(tmp_path, 5)
    child = f"{_LOAD_IN_CHILD}({str(source)!r}), {FLAGS!r}).handle.answer()"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", child], env=environment, check=True)
    (built,) = cache.glob("*.so")
    damaged = built.with_suffix(".damaged")
    damaged.write_bytes(b"not a shared library")
    damaged.replace(built)
    assert native_build.load(source, FLAGS).handle.answer() == 5
    assert built.read_bytes().startswith(b"\x7fELF")


def test_refusals_say_why(tmp_path, cache, monkeypatch):
    source = _source(tmp_path, 1)
    monkeypatch.setenv(native_build.DISABLE_VARIABLE, "0")
    assert native_build.load(source, FLAGS).unavailable_reason == "PEFTKIT_NATIVE_KERNELS=0"
    monkeypatch.delenv(native_build.DISABLE_VARIABLE)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert "does not run" in native_build.load(source, FLAGS).unavailable_reason
    monkeypatch.delenv("CC")
    cache.mkdir(parents=True, exist_ok=True)  # made by the refused loads above
    cache.chmod(0o777)  # another user could plant a library here: nothing is loaded from it
    library = native_build.load(source, FLAGS)
    assert library.handle is None and "writable by others (chmod 700 it)" in library.unavailable_reason
    cache.chmod(0o700)
    assert native_build.load(source, FLAGS).handle.answer() == 1
