"""An adapter's state dict taken from an FSDP2-sharded model and loaded into a fresh one gives the adapted
outputs, equal to peft's, for the methods that rotate the weight in the forward (BOFT, HRA, OFT) and LoRA.
The compatibility run of 2026-12-03 reported BOFT and HRA differing from peft after such a round trip."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("fsdp_state_dict.py")
TOLERANCE = 1e-5  # fp32, same weights and inputs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fsdp2_state_dict_round_trip_equals_peft():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(_free_port())], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [row["method"] for row in rows] == ["BOFTConfig", "HRAConfig", "OFTConfig", "LoraConfig"]
    for row in rows:
        assert row["adapter_effect"] > 1e-3, row  # a no-op adapter would make every comparison pass
        assert row["sharded_vs_before"] <= TOLERANCE, row
        assert row["reloaded_vs_before"] <= TOLERANCE, row
        assert row["reloaded_vs_peft"] <= TOLERANCE, row
