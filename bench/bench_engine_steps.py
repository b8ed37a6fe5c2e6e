"""The serving engine's decoding step: 16 running requests, each with its own adapter, vs the base model.

`BatchEngine` (peftkit.serving) stepped by hand on a random SmolLM2-shaped Llama (30 layers, hidden 576,
LoRA r=16 on all linear layers), 16 requests of 32 prompt tokens, none finishing during the timed
steps. Three engines, interleaved round by round: the base model alone, peftkit with 16 adapters, and
peftkit given a fresh routing at every step (a new list of names, as the engine passed before it kept
one per batch: every layer then re-checks its stacked factors at every step). Prints the median time of
a decoding step and the ratios.

    python bench/bench_engine_steps.py
    python bench/bench_engine_steps.py --layers 4 --repeats 2   # quick check
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from bench_serving import build, median, paired_ratio, smollm2_shaped

warnings.filterwarnings("ignore")


def step_time(model, names: list[str] | None, steps: int, fresh_routing: bool = False) -> float:
    """Seconds per decoding step of an engine running one request per name (None: the base model)."""
    from peftkit.serving.engine import BatchEngine, GenerationRequest

    engine = BatchEngine(model, None, max_batch=16)
    if fresh_routing:
        forward = engine._forward
        engine._forward = lambda ids, mask, positions, cache, n: forward(ids, mask, positions, cache, list(n))
    for i, name in enumerate(names or ["__base__"] * 16):
        engine.submit(GenerationRequest([5 + i, 9, 17, 33] * 8, name, steps + 2))
    engine.step()  # admission, prefill and the first decoding step
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import peftkit

    base = smollm2_shaped(args.layers)
    ours = build(peftkit, base, 16).eval()
    names = [f"adapter{i}" for i in range(16)]
    runs = {
        "base model": lambda: step_time(base, None, args.steps),
        "peftkit, 16 adapters": lambda: step_time(ours, names, args.steps),
        "peftkit, a fresh routing per step": lambda: step_time(ours, names, args.steps, True),
    }
    for run in runs.values():  # warm-up
        run()
    samples: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(args.repeats):
        for key, run in runs.items():
            samples[key].append(run())
    print(f"{args.layers} layers, hidden 576, LoRA r=16 all-linear, {args.threads} threads, 16 requests")
    print(f"{'engine':36s} {'ms/step':>8s} {'vs base':>8s}")
    for key in runs:
        ratio = paired_ratio(samples, key, "base model")
        print(f"{key:36s} {1e3 * median(samples[key]):8.1f} {ratio:8.3f}")


if __name__ == "__main__":
    main()
