"""peftkit against an earlier revision of itself, in one process: the training step of bench_serving.py
(random SmolLM2-shaped Llama, LoRA r=16 all-linear, batch 4 x 256 tokens) for this checkout's peftkit and
for the package as it was at `--rev`, with the frozen base, rounds interleaved. `--block`: one block of
bench_training_block.py instead (seven adapted projections, 1024 tokens; CPU time with one thread).

Whole-model steps on this machine kind move by 10-20% between runs, and with them every ratio to the
frozen base. Two revisions measured in the same rounds share that drift: their paired ratio (median over
rounds of new / old) shows a change of a few percent that separate runs cannot.

The earlier package is taken with `git archive <rev> src/peftkit` into a temporary folder and imported
under another name (its imports are relative), so the repository must be a git checkout.

    python bench/compare_revisions.py --rev 5b6e095 --keep-freed-memory
    python bench/compare_revisions.py --rev 5b6e095 --block --threads 1 --repeats 20
    python bench/compare_revisions.py --rev HEAD~1 --layers 4 --repeats 3   # quick check
"""

from __future__ import annotations

import argparse
import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from bench_serving import interleaved, median, paired_ratio, smollm2_shaped, training_steps
from bench_training_block import block_steps

REPOSITORY = Path(__file__).resolve().parent.parent


def import_revision(rev: str, folder: Path):
    """The peftkit package as it was at `rev`, imported as `peftkit_at_<rev>`."""
    archive = subprocess.run(
        ["git", "-C", str(REPOSITORY), "archive", rev, "src/peftkit"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    name = "peftkit_at_" + "".join(c if c.isalnum() else "_" for c in rev)
    (folder / "src" / "peftkit").rename(folder / name)
    sys.path.insert(0, str(folder))
    return importlib.import_module(name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rev", required=True, help="the earlier revision (a commit, tag or HEAD~n)")
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dropouts", default="0.0,0.05", help="comma list of lora_dropout values")
    parser.add_argument("--block", action="store_true", help="one block of seven projections, not the model")
    parser.add_argument(
        "--keep-freed-memory", action="store_true", help="as in bench_serving.py: no page faults per step"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import peftkit

    if args.keep_freed_memory:
        from peftkit.utils.memory import keep_freed_memory

        keep_freed_memory()
    dropouts = [float(value) for value in args.dropouts.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        earlier = import_revision(args.rev, Path(folder))
        libraries = (("this checkout", peftkit), (args.rev, earlier))
        if args.block:  # keys as bench_serving's: "frozen base" and "<label> dropout=<p>"
            fns = {
                label if label == "frozen base" else f"{label} dropout={dropout}": fn
                for (label, dropout), fn in block_steps(libraries, dropouts).items()
            }
        else:
            fns = training_steps(smollm2_shaped(args.layers), libraries, dropouts, batch=4, length=256)
        # one block, one thread: CPU time (no thread-pool spinning), as bench_training_block.py times it
        clock = time.process_time if args.block and args.threads == 1 else time.perf_counter
        samples = interleaved(fns, args.repeats, settle=True, clock=clock)
    print(
        f"peftkit (this checkout) vs peftkit at {args.rev}, torch {torch.__version__}, {args.threads} threads, "
        + ("one block of 7 projections, " if args.block else f"{args.layers} layers, ")
        + f"{args.repeats} rounds"
        + (", malloc keeps freed memory" if args.keep_freed_memory else "")
    )
    print(f"{'training step':40s} {'seconds':>8s} {'vs frozen':>10s}")
    for key, values in samples.items():
        print(f"{key:40s} {median(values):8.3f} {paired_ratio(samples, key, 'frozen base') - 1:+10.1%}")
    for dropout in dropouts:
        ratio = paired_ratio(samples, f"this checkout dropout={dropout}", f"{args.rev} dropout={dropout}")
        print(f"dropout {dropout}: this checkout / {args.rev} = {ratio:.3f} (median of per-round ratios)")


if __name__ == "__main__":
    main()
