"""The entry points: `peftkit` (console script), `python -m peftkit`, and help for every subcommand."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest


def test_console_script_is_declared():
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("peftkit") == "peftkit.cli:main"


def test_python_dash_m_runs_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "peftkit", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    for command in ("train", "generate", "merge", "info", "demo"):
        assert command in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "peftkit", "info"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2 and "the following arguments are required: adapter" in bad.stderr


@pytest.mark.parametrize("command", ["train", "generate", "merge", "info", "demo"])
def test_every_subcommand_has_help(cli, command):
    code, out, _ = cli(command, "--help")
    assert code == 0 and f"usage: peftkit {command}" in out


def test_train_help_lists_every_lora_option(cli):
    import dataclasses

    from peftkit import LoraConfig

    code, out, _ = cli("train", "--help")
    assert code == 0
    skipped = {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
               "inference_mode", "runtime_config"}  # fmt: skip
    for f in dataclasses.fields(LoraConfig):
        if f.name not in skipped:
            assert "--" + f.name.replace("_", "-") in out, f.name
