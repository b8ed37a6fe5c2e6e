"""What LoRA and its dropout cost in a training step, on one block of a SmolLM2-shaped layer's seven adapted
projections (q, k, v, o, gate, up, down; 1024 tokens, r=16): forward and backward with lora_dropout 0
and 0.05, for peft and peftkit, and the frozen block (input gradients only), in one process. Then the
floor: LoRA's six rank-16 passes per projection timed alone against the base's two GEMMs.

Whole-model training steps on this machine kind move 5-10% between runs of the same code, more than the
dropout's own cost; one block measured in CPU time with one thread (no thread-pool spinning), rounds
interleaved, is steadier. Prints the median time per block for each case, its overhead over the frozen
block, and the dropout's cost per adapted linear (dropout 0.05 minus dropout 0), for both libraries.

    python bench/bench_training_block.py                # 40 rounds
    python bench/bench_training_block.py --repeats 10   # quick check
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from bench_serving import interleaved

SHAPES = [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)]


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.projections = nn.ModuleList(nn.Linear(i, o, bias=False) for i, o in SHAPES)


def adapted(lib, base: Block, dropout: float):
    config = lib.LoraConfig(
        r=16,
        lora_alpha=32,
        target_modules=[f"projections.{i}" for i in range(len(SHAPES))],
        lora_dropout=dropout,
        init_lora_weights=False,
    )
    return lib.get_peft_model(copy.deepcopy(base), config).train()


def block_steps(libraries, dropouts) -> dict[tuple[str, float], Callable[[], None]]:
    """Forward and backward of the frozen block (key ("frozen base", 0.0)) and of each library's adapted
    block per dropout (key (label, dropout)), on the same inputs and output gradients."""
    torch.manual_seed(0)
    base = Block()
    inputs = {n: torch.randn(1024, n, requires_grad=True) for n in (576, 1536)}
    output_grads = [torch.randn(1024, o) for _, o in SHAPES]

    def step(model, layers) -> None:
        model.zero_grad(set_to_none=True)
        outputs = [layer(inputs[i]) for layer, (i, _) in zip(layers, SHAPES)]
        torch.autograd.backward(outputs, output_grads)

    frozen = copy.deepcopy(base).requires_grad_(False)
    fns = {("frozen base", 0.0): lambda: step(frozen, frozen.projections)}
    for label, lib in libraries:
        for dropout in dropouts:
            model = adapted(lib, base, dropout)
            fns[(label, dropout)] = lambda m=model: step(m, m.base_model.model.projections)
    return fns


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="more than one: wall time, not CPU time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # CPU time sums the threads (and their spinning): with several, time the wall clock
    clock = time.process_time if args.threads == 1 else time.perf_counter
    import peft

    import peftkit

    fns = block_steps((("peft", peft), ("peftkit", peftkit)), (0.0, 0.05))
    samples = interleaved(fns, args.repeats, settle=True, clock=clock)
    ms = {key: statistics.median(values) * 1e3 for key, values in samples.items()}
    print(
        f"peft {peft.__version__} vs peftkit {peftkit.__version__}, torch {torch.__version__}, {args.threads} thread(s), "
        f"{args.repeats} rounds: one block of 7 adapted projections, 1024 tokens, forward + backward"
    )
    reference = ms[("frozen base", 0.0)]
    print(f"frozen base (input gradients only): {reference:.1f} ms")
    print(
        f"{'library':10s} {'dropout 0 (ms)':>15s} {'vs frozen':>10s} {'dropout 0.05 (ms)':>18s} "
        f"{'vs frozen':>10s} {'dropout per linear (ms)':>24s}"
    )
    for name in ("peft", "peftkit"):
        without, with_dropout = ms[(name, 0.0)], ms[(name, 0.05)]
        per_linear = (with_dropout - without) / len(SHAPES)
        print(
            f"{name:10s} {without:15.1f} {without / reference - 1:+10.1%} {with_dropout:18.1f} "
            f"{with_dropout / reference - 1:+10.1%} {per_linear:24.2f}"
        )
    ratio = (ms[("peftkit", 0.05)] - ms[("peftkit", 0.0)]) / (ms[("peft", 0.05)] - ms[("peft", 0.0)])
    print(f"dropout cost peftkit / peft: {ratio:.2f}")
    print_pass_floor()


def timed_ms(fn, repeats: int = 100) -> float:
    """Wall time per call (each op here runs long enough for the clock, one thread or several)."""
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def pass_times(d_in: int, d_out: int, tokens: int, r: int) -> tuple[float, float]:
    """(base forward + input-gradient GEMMs, the six rank-r passes) in ms, each op timed alone."""
    x, grad = torch.randn(tokens, d_in), torch.randn(tokens, d_out)
    weight, lora_A, lora_B = torch.randn(d_out, d_in), torch.randn(r, d_in), torch.randn(d_out, r)
    hidden, out, grad_x = torch.randn(tokens, r), torch.randn(tokens, d_out), torch.randn(tokens, d_in)
    base = timed_ms(lambda: x @ weight.t()) + timed_ms(lambda: grad @ weight)
    passes = (
        lambda: x @ lora_A.t(),  # forward: h = x A^T
        lambda: out.addmm_(hidden, lora_B.t()),  # y += s h B^T
        lambda: grad @ lora_B,  # backward: dh = s dy B
        lambda: hidden.t() @ grad,  # dB = s (h^T dy)^T
        lambda: hidden.t() @ x,  # dA = dh^T x
        lambda: grad_x.addmm_(hidden, lora_A),  # dx += dh A
    )
    return base, sum(timed_ms(fn) for fn in passes)


def print_pass_floor(tokens: int = 1024, r: int = 16) -> None:
    """The six rank-r passes of a LoRA projection's training step, as the fused node runs them, each
    timed alone, against the base's two GEMMs, and the share the FLOPs alone would give."""
    print(f"\nthe floor: LoRA's six rank-{r} passes timed alone vs the base's two GEMMs ({tokens} tokens)")
    print(f"{'projection':12s} {'base (ms)':>10s} {'passes (ms)':>12s} {'share':>7s} {'FLOP share':>11s}")
    for d_in, d_out in sorted(set(SHAPES)):
        base, passes = pass_times(d_in, d_out, tokens, r)
        flops = 3 * r * (d_in + d_out) / (2 * d_in * d_out)
        print(f"{d_in:>5d} -> {d_out:<4d} {base:10.2f} {passes:12.2f} {passes / base:7.1%} {flops:11.1%}")


if __name__ == "__main__":
    main()
