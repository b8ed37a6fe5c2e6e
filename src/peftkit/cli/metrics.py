"""The training record: one JSON object per line in `metrics.jsonl`, and a `loss.png` plot of it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


class MetricsLog:
    """Appends records to `<folder>/metrics.jsonl`, flushing each line so a crash loses nothing."""

    def __init__(self, folder: str | Path, keep_up_to_step: int | None = None) -> None:
        """Open the log; with `keep_up_to_step` (resuming) earlier records after that step are dropped,
        so a resumed run does not log its steps twice."""
        self.path = Path(folder) / METRICS_FILE
        kept = read_metrics(self.path) if keep_up_to_step is not None and self.path.is_file() else []
        kept = [r for r in kept if r.get("step", 0) <= (keep_up_to_step or 0)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record."""
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics file."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_loss(folder: str | Path) -> Path | None:
    """Draw training (and evaluation) loss per step into `<folder>/loss.png`.

    Returns the file, or None when matplotlib is not installed (the plot is optional: `peftkit[plot]`).
    """
    if importlib.util.find_spec("matplotlib") is None:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    records = read_metrics(Path(folder) / METRICS_FILE)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="training loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="evaluation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (completion tokens)")
    ax.legend()
    ax.grid(alpha=0.3)
    out = Path(folder) / PLOT_FILE
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
