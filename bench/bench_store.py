"""The adapter store: 200 adapters on disk, 16 resident, loaded on first use by `generate(adapter_names=)`.

On a random SmolLM2-shaped Llama (30 layers, hidden 576) with LoRA r=16 on all linear layers (about 19 MiB
per adapter), this writes `--adapters` adapter folders to a temporary directory, registers them all in an
`AdapterStore` bounded to `--resident` adapters' bytes, then runs `--rounds` mixed batches of 16 prompts
whose adapters are drawn at random (so most batches load some adapters and unload others). It prints:
- the time one load takes (median and 90th percentile of every load in the run), the goal being < 50 ms;
- resident adapter bytes after every batch against the bound (the bound must hold after each);
- the process's resident memory (RSS) at the start, after registering, and its peak, with the base
  model's and the bound's sizes for comparison (the factor banks of a mixed batch add up to one copy of
  the batch's adapters on top of the bound: see tuners/lora/mixed_batch.py);
- a mixed generate with every adapter resident vs one that loads some, and vs the base model alone.

    python bench/bench_store.py                      # 200 adapters (about 3.8 GiB on disk), 16 resident
    python bench/bench_store.py --adapters 24 --layers 4
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

from bench_serving import lora_config, smollm2_shaped

warnings.filterwarnings("ignore")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_adapters(peftkit, base, root: Path, count: int) -> list[str]:
    """One adapter saved by peftkit; the others are the same files with fresh random tensors (fast)."""
    model = peftkit.get_peft_model(base, lora_config(peftkit))
    model.save_pretrained(root / "a000")
    template = peftkit.load_peft_weights(str(root / "a000"))
    config = json.loads((root / "a000" / "adapter_config.json").read_text())
    model.unload()
    generator = torch.Generator().manual_seed(0)
    names = ["a000"]
    for i in range(1, count):
        folder = root / f"a{i:03d}"
        folder.mkdir()
        tensors = {k: torch.randn(v.shape, generator=generator) * 0.02 for k, v in template.items()}
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps(config))
        names.append(folder.name)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--adapters", type=int, default=200)
    parser.add_argument("--resident", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import peftkit
    from peftkit.serving import AdapterStore

    start_rss = rss_mib()
    base = smollm2_shaped(args.layers)
    base_mib = sum(p.numel() * p.element_size() for p in base.parameters()) / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        names = write_adapters(peftkit, base, root, args.adapters)
        print(f"wrote {len(names)} adapters in {time.perf_counter() - start:.1f} s")
        model = peftkit.PeftModel.from_pretrained(base, root / names[0], adapter_name=names[0]).eval()
        per_adapter = sum(t.numel() * t.element_size() for n, t in model.named_parameters() if ".a000." in n)
        bound = per_adapter * args.resident
        store = AdapterStore(model, max_bytes=bound)
        store.register(names[0], root / names[0], adopt=True)
        start = time.perf_counter()
        store.register_folder(root)
        register_s = time.perf_counter() - start
        after_register = rss_mib()
        print(
            f"base model {base_mib:.0f} MiB, one adapter {per_adapter / 2**20:.1f} MiB, bound {bound / 2**20:.0f} MiB "
            f"({args.resident} adapters); registering {len(names)} took {register_s * 1000:.0f} ms"
        )
        ids = torch.randint(0, 1000, (16, 32), generator=torch.Generator().manual_seed(1))
        rng = random.Random(0)

        def run(batch):
            with torch.inference_mode():
                return model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8,
                    do_sample=False, pad_token_id=0, adapter_names=batch,
                )  # fmt: skip

        times = []
        for _ in range(args.rounds):
            distinct = rng.sample(names, min(16, args.resident))  # a batch may not need more than the bound
            batch = (distinct * 16)[:16]
            start = time.perf_counter()
            run(batch)
            times.append(time.perf_counter() - start)
            assert store.resident_bytes <= bound, "the store went past its bound"
        loads = [store.info(n).last_load_seconds for n in names if store.info(n).loads]
        warm_batch = (store.resident[-16:] * 16)[:16]
        warm = []
        for _ in range(3):
            start = time.perf_counter()
            run(warm_batch)
            warm.append(time.perf_counter() - start)
        with model.disable_adapter():
            start = time.perf_counter()
            run(None)
            base_s = time.perf_counter() - start
        loads.sort()
        print(
            f"loads: {len(loads)}, median {statistics.median(loads) * 1000:.1f} ms, "
            f"90th percentile {loads[int(0.9 * (len(loads) - 1))] * 1000:.1f} ms (goal < 50 ms)"
        )
        print(
            f"resident after the run: {len(store.resident)} adapters, {store.resident_bytes / 2**20:.0f} MiB"
        )
        print(
            f"RSS: start {start_rss:.0f} MiB, after registering {after_register:.0f} MiB, now {rss_mib():.0f} MiB, "
            f"peak {peak_rss_mib():.0f} MiB (base {base_mib:.0f} + bound {bound / 2**20:.0f} MiB)"
        )
        print(
            f"generate 16 x 8 tokens: with loads {statistics.median(times):.2f} s, all resident "
            f"{statistics.median(warm):.2f} s, base model {base_s:.2f} s"
        )


if __name__ == "__main__":
    main()
