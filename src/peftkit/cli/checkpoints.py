"""Training checkpoints: the adapter (in PEFT's format) plus the optimizer, scheduler and step.

A checkpoint folder `checkpoint-<step>` is itself a valid adapter folder, so any checkpoint can be used
with `PeftModel.from_pretrained` as it is; `trainer_state.pt` beside it lets training resume. A
checkpoint is written into a hidden temporary folder and renamed into place when complete, so an
interrupted save never leaves a half-written `checkpoint-<step>`. Only the newest few are kept.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import CliError

STATE_FILE = "trainer_state.pt"
DEFAULT_KEEP = 3  # checkpoints kept by default (each holds the adapter and twice its size of optimizer state)
_NAME = re.compile(r"^checkpoint-(\d+)$")
_STAGING_PREFIX = ".checkpoint-staging-"


def save_checkpoint(
    model: Any, optimizer: Any, scheduler: Any, step: int, output_dir: Path, keep: int | None
) -> Path:
    """Write `output_dir/checkpoint-<step>` atomically; with `keep`, delete all but the newest `keep`."""
    import torch

    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in output_dir.glob(_STAGING_PREFIX + "*"):  # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    folder = output_dir / f"checkpoint-{step}"
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=output_dir))
    try:
        model.save_pretrained(staging)
        state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        torch.save(state, staging / STATE_FILE)
        if folder.exists():  # a checkpoint of the same step from an earlier run: replace it
            old = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=output_dir))
            os.replace(folder, old / folder.name)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(staging, folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
    if keep:
        for stale in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(stale)
    return folder


def list_checkpoints(output_dir: Path) -> list[Path]:
    """The complete checkpoints in `output_dir`, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found) if (p / STATE_FILE).is_file()]


def find_checkpoint(resume: str, output_dir: Path) -> Path:
    """The checkpoint `--resume` names: a checkpoint folder, or 'latest' (the newest in `output_dir`)."""
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise CliError(
                f"--resume latest: there is no checkpoint in '{output_dir}' (train with --save-steps)."
            )
        return found[-1]
    folder = Path(resume)
    if not (folder / STATE_FILE).is_file():
        raise CliError(
            f"--resume {resume}: not a checkpoint folder (it has no {STATE_FILE}); pass a checkpoint-<step> "
            "folder written by `peftkit train --save-steps`, or 'latest'."
        )
    return folder


def load_checkpoint(folder: Path, model: Any, optimizer: Any, scheduler: Any) -> int:
    """Restore adapter weights, optimizer and scheduler from `folder`; return the step it was saved at."""
    import torch

    from ..utils import load_peft_weights, set_peft_model_state_dict

    try:
        set_peft_model_state_dict(model, load_peft_weights(str(folder)))
        state = torch.load(folder / STATE_FILE, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, RuntimeError) as err:  # AdapterLoadError is a ValueError
        raise CliError(
            f"The checkpoint {folder} does not fit this run ({err}). Resume with the settings it was trained "
            "with, or start fresh: drop --resume and pass --overwrite (or another --output-dir)."
        ) from err
    return int(state["step"])
