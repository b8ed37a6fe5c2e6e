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
import copy
import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from bench_serving import interleaved, lora_config, median, paired_ratio, share_base_weights, smollm2_shaped
from bench_training_block import SHAPES, Block, adapted

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


def model_steps(libraries, dropouts: list[float], layers: int) -> dict:
    """A training step of the whole model per library and dropout, and of the frozen base."""
    base = smollm2_shaped(layers)
    ids = torch.randint(0, 1000, (4, 256), generator=torch.Generator().manual_seed(1))

    def step(model) -> None:
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()

    frozen = copy.deepcopy(base).train()
    frozen.requires_grad_(False)
    frozen.enable_input_require_grads()
    fns = {"frozen base": lambda: step(frozen)}
    for dropout in dropouts:
        for label, lib in libraries:
            model = lib.get_peft_model(copy.deepcopy(base), lora_config(lib, dropout))
            model = share_base_weights(frozen, model).train()
            fns[f"{label} dropout={dropout}"] = lambda m=model: step(m)
    return fns


def block_steps(libraries, dropouts: list[float]) -> dict:
    """Forward and backward of one block per library and dropout, and of the frozen block."""
    torch.manual_seed(0)
    base = Block()
    inputs = {n: torch.randn(1024, n, requires_grad=True) for n in (576, 1536)}
    output_grads = [torch.randn(1024, o) for _, o in SHAPES]

    def step(layers, model) -> None:
        model.zero_grad(set_to_none=True)
        outputs = [layer(inputs[i]) for layer, (i, _) in zip(layers, SHAPES)]
        torch.autograd.backward(outputs, output_grads)

    frozen = copy.deepcopy(base).requires_grad_(False)
    fns = {"frozen base": lambda: step(frozen.projections, frozen)}
    for dropout in dropouts:
        for label, lib in libraries:
            model = adapted(lib, base, dropout)
            fns[f"{label} dropout={dropout}"] = lambda m=model: step(m.base_model.model.projections, m)
    return fns


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
        fns = (
            block_steps(libraries, dropouts) if args.block else model_steps(libraries, dropouts, args.layers)
        )
        if args.block and args.threads == 1:  # CPU time: no thread-pool spinning (bench_training_block.py)
            samples = {key: [] for key in fns}
            for _ in range(args.repeats):
                for key, fn in fns.items():
                    fn()
                    start = time.process_time()
                    fn()
                    samples[key].append(time.process_time() - start)
        else:
            samples = interleaved(fns, args.repeats, settle=True)
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
