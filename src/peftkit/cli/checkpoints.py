"""Training checkpoints: the adapter (in PEFT's format) plus the optimizer, scheduler and step.

A checkpoint folder `checkpoint-<step>` is itself a valid adapter folder, so any checkpoint can be used
with `PeftModel.from_pretrained` as it is; `trainer_state.pt` beside it lets training resume.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from .errors import CliError

STATE_FILE = "trainer_state.pt"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def save_checkpoint(
    model: Any, optimizer: Any, scheduler: Any, step: int, output_dir: Path, keep: int | None
) -> Path:
    """Write `output_dir/checkpoint-<step>`; with `keep`, delete all but the newest `keep` checkpoints."""
    import torch

    folder = output_dir / f"checkpoint-{step}"
    model.save_pretrained(folder)
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    torch.save(state, folder / STATE_FILE)
    if keep is not None:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
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

    set_peft_model_state_dict(model, load_peft_weights(str(folder)))
    state = torch.load(folder / STATE_FILE, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])
