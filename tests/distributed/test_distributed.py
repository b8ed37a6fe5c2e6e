"""LoRA training across 2 processes on the CPU (gloo): DDP and FSDP2 under torchrun, DDP under accelerate
launch. The ranks end with the same adapter, only the main process writes, saving gathers FSDP2's
shards (including empty ones), and the saved adapter equals a single-process run's."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("lora_train.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


# a run takes ~10 s; a launcher once hung in its rendezvous for minutes on a loaded machine: such a run
# is killed and started once more, and a second hang fails the test instead of stalling the suite
TIMEOUT_S = 180
# a launcher still running this long after every rank wrote its results and marked its exit is stuck in
# its own shutdown (torch's or accelerate's, seen twice on a loaded CI machine): it is killed, with a
# warning, and the results are checked as if it had exited
SHUTDOWN_GRACE_S = 30


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (workers may start sessions of their own, out of the launcher's group)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _kill_tree(process: subprocess.Popen) -> None:
    for pid in [*_descendants(process.pid), process.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def _wait(process: subprocess.Popen, tmp_dir: Path, ranks: int) -> str:
    """'exited', 'shutdown_hang' (every rank marked its exit, the launcher did not follow within the
    grace period: killed) or 'hang' (killed after TIMEOUT_S)."""
    deadline, all_marked_at = time.monotonic() + TIMEOUT_S, None
    while time.monotonic() < deadline:
        try:
            process.wait(timeout=1)
            return "exited"
        except subprocess.TimeoutExpired:
            pass
        if all_marked_at is None and all((tmp_dir / f"exited_rank{r}").exists() for r in range(ranks)):
            all_marked_at = time.monotonic()
        if all_marked_at is not None and time.monotonic() - all_marked_at > SHUTDOWN_GRACE_S:
            _kill_tree(process)
            return "shutdown_hang"
    _kill_tree(process)
    return "hang"


def _run(command: list[str], tmp_dir: Path, ranks: int = 2) -> None:
    for attempt in (1, 2):
        for marker in tmp_dir.glob("exited_rank*"):
            marker.unlink()
        # output to files, not pipes: a stray worker holding a pipe open cannot block the test then
        log = tmp_dir / f"launch{attempt}.log"
        with log.open("w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True, env=ENV)
            outcome = _wait(process, tmp_dir, ranks)
        if outcome == "exited":
            assert process.returncode == 0, f"{' '.join(command)}\n{log.read_text()[-6000:]}"
            return
        if outcome == "shutdown_hang":
            warnings.warn(f"{command[2]}'s launcher hung after every rank had finished: killed", stacklevel=2)
            return
    pytest.fail(f"{' '.join(command)} did not finish within {TIMEOUT_S} s, twice")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("single")
    _run([sys.executable, str(SCRIPT), "--mode", "single", "--out", str(out)], out, ranks=1)
    adapter = _adapter(out)
    assert any(v.abs().max() > 1e-3 for k, v in adapter.items() if "lora_B" in k)  # training moved it
    return adapter


def _torchrun(mode: str, out: Path) -> dict:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    _run([*launcher, str(SCRIPT), "--mode", mode, "--out", str(out)], out)
    return json.loads((out / "report.json").read_text())


def _assert_matches_single(out: Path, single: dict[str, torch.Tensor]) -> None:
    saved = _adapter(out)
    assert saved.keys() == single.keys()
    for key, tensor in saved.items():
        assert tensor.shape == single[key].shape and tensor.numel() > 0, key
        # the same global batch per step and plain SGD: equal up to the reduction order of the gradients
        torch.testing.assert_close(tensor, single[key], atol=1e-6, rtol=0, msg=key)


def test_torchrun_ddp(single, tmp_path):
    report = _torchrun("ddp", tmp_path)
    assert report["world"] == 2 and report["rank_diff"] == 0.0
    assert not report["other_rank_wrote"]
    _assert_matches_single(tmp_path, single)


def test_torchrun_fsdp2(single, tmp_path):
    report = _torchrun("fsdp2", tmp_path)
    assert report["world"] == 2 and report["rank_diff"] == 0.0 and report["sharded"]
    assert not report["other_rank_wrote"]
    # the rank-1 v_proj factors (1, 32) leave the second rank an empty shard: saving gathered them anyway
    assert any("v_proj.lora_A" in name for name in report["empty_shards"])
    _assert_matches_single(tmp_path, single)


def test_accelerate_launch(single, tmp_path):
    # `--multi_gpu` selects accelerate's multi-process launcher; on a CPU-only machine the script's
    # Accelerator(cpu=True) runs DDP over gloo
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher += ["--main_process_port", str(_free_port())]
    _run([*launcher, str(SCRIPT), "--mode", "accelerate", "--out", str(tmp_path)], tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world"] == 2 and report["rank_diff"] == 0.0 and not report["other_rank_wrote"]
    _assert_matches_single(tmp_path, single)
