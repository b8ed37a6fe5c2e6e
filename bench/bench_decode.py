"""Mixed-adapter decoding: generate with `adapter_names=` (16 prompts, 16 different adapters) vs the base.

On a random SmolLM2-shaped Llama (30 layers, hidden 576, LoRA r=16 on all linear layers, random B so
that every adapter changes the output), in one process, interleaved round by round:
  (e) prefill: one forward of 16 x 64 tokens, each sample with its own adapter
  (f) decode: `generate` 16 new tokens (greedy, KV cache) for 16 prompts of 64 tokens, each its own adapter
for the base model, peft and peftkit. Checks first that peft and peftkit produce the same tokens and
that peftkit's mixed batch equals each adapter run alone (greedy tokens). Prints seconds and ratios
(medians of per-round ratios): vs the base model, and peft / peftkit throughput.

`--profile` adds an operator profile of one peftkit decode step and a count of the bytes each decode
step reads (base weights vs adapter factors): the numbers behind "where the time goes per token".

    python bench/bench_decode.py               # full size
    python bench/bench_decode.py --layers 4    # quick check
"""

from __future__ import annotations

import argparse
import warnings

import torch

from bench_serving import build, interleaved, median, paired_ratio, smollm2_shaped

warnings.filterwarnings("ignore")


def generate(model, ids, new_tokens: int, **kwargs):
    with torch.inference_mode():
        return model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            **kwargs,
        )


def prefill(model, ids, **kwargs):
    with torch.inference_mode():
        return model(input_ids=ids, **kwargs).logits


def check_outputs(theirs, ours, ids, names, new_tokens: int) -> None:
    """peft and peftkit agree, and peftkit's mixed batch equals each adapter alone (greedy tokens)."""
    mixed = generate(ours, ids, new_tokens, adapter_names=names)
    assert torch.equal(mixed, generate(theirs, ids, new_tokens, adapter_names=names)), "peft differs"
    for row in (0, len(names) - 1):
        ours.set_adapter(names[row])
        alone = generate(ours, ids[row : row + 1], new_tokens)
        assert torch.equal(mixed[row : row + 1], alone), f"sample {row} differs from its adapter alone"
    ours.set_adapter(names[0])


def bytes_per_decode_step(base, model, names) -> tuple[int, int]:
    """(bytes of base weights, bytes of the batch's adapter factors) one decode step reads."""
    base_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    adapter_bytes = 0
    for name, param in model.named_parameters():
        if "lora_" in name and any(f".{n}." in name for n in set(names)):
            adapter_bytes += param.numel() * param.element_size()
    return base_bytes, adapter_bytes


def profile_step(model, ids, names) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate(model, ids, 2, adapter_names=names)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="glibc keeps freed memory for reuse (peftkit.utils.memory): no page faults for memory a "
        "previous run freed, for all three models alike",
    )
    parser.add_argument("--parts", default="prefill,decode", help="which to time: prefill, decode or both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        from peftkit.utils.memory import keep_freed_memory

        keep_freed_memory()
    import peft

    import peftkit

    base = smollm2_shaped(args.layers)
    ours, theirs = build(peftkit, base, 16), build(peft, base, 16)
    theirs.load_state_dict(ours.state_dict())  # the same weights in both
    ours.eval()
    theirs.eval()
    names = [f"adapter{i}" for i in range(16)]
    ids = torch.randint(0, 1000, (16, 64), generator=torch.Generator().manual_seed(0))
    print(
        f"peft {peft.__version__} vs peftkit {peftkit.__version__}, torch {torch.__version__}, "
        f"{args.threads} threads, {args.layers} layers, hidden 576, LoRA r=16 all-linear, 16 adapters"
    )
    check_outputs(theirs, ours, ids, names, 4)
    base_bytes, adapter_bytes = bytes_per_decode_step(base, ours, names)
    print(
        f"bytes read per decode step: base weights {base_bytes / 2**20:.0f} MiB, the 16 adapters' factors "
        f"{adapter_bytes / 2**20:.0f} MiB: reading each once bounds decoding at "
        f"{1 + adapter_bytes / base_bytes:.2f}x the base"
    )
    new = args.new_tokens
    parts = [p for p in ("prefill", "decode") if p in args.parts.split(",")]
    functions = {
        "prefill base": lambda: prefill(base, ids),
        "prefill peft": lambda: prefill(theirs, ids, adapter_names=names),
        "prefill peftkit": lambda: prefill(ours, ids, adapter_names=names),
        "decode base": lambda: generate(base, ids, new),
        "decode peft": lambda: generate(theirs, ids, new, adapter_names=names),
        "decode peftkit": lambda: generate(ours, ids, new, adapter_names=names),
    }
    samples = interleaved({k: f for k, f in functions.items() if k.split()[0] in parts}, args.repeats)
    print(f"{'measurement':44s} {'seconds':>9s} {'vs base':>8s}")
    for part in parts:
        for who in ("base", "peft", "peftkit"):
            key = f"{part} {who}"
            ratio = paired_ratio(samples, key, f"{part} base")
            print(f"{key:44s} {median(samples[key]):9.3f} {ratio:8.3f}")
        speedup = paired_ratio(samples, f"{part} peft", f"{part} peftkit")
        print(f"{part + ' throughput peftkit / peft':44s} {speedup:9.3f}")
    if args.profile:
        profile_step(ours, ids, names)


if __name__ == "__main__":
    main()
