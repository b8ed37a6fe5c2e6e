"""Adapter loading benchmark: `PeftModel.from_pretrained` of peft vs peftkit, time and peak memory.

A random Llama (24 layers, hidden 256, 4 heads, vocab 1000) with LoRA r=64 on all linear layers
(168 modules, ~30 MB of fp32 adapter weights) is saved once by peft; both libraries then load that
folder onto fresh copies of the same base model.

- Time: the median of `--repeats` loads, peft and peftkit interleaved in this process (one warm-up
  round first), each onto a deep copy made outside the timed region.
- Peak memory: measured in a fresh child process per (library, low_cpu_mem_usage) so that memory
  freed by one load cannot be reused by the next. The child builds the base model, resets the peak RSS
  (Linux `/proc/self/clear_refs`), loads, and reports peak RSS minus RSS before the load. The adapter
  file's size is printed beside it: a peak near 1x the adapter means one copy is held, near 2x two
  copies (the file's tensors plus the freshly initialised adapter).

    python bench/bench_load.py               # full size
    python bench/bench_load.py --layers 4    # quick check
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch

warnings.filterwarnings("ignore")


def base_model(layers: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=1000,
    )
    return LlamaForCausalLM(config).eval()


def save_adapter(folder: str, layers: int, rank: int) -> int:
    """Save a perturbed all-linear LoRA with peft; return how many modules it adapts."""
    import peft

    model = peft.get_peft_model(base_model(layers), peft.LoraConfig(r=rank, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    model.save_pretrained(folder)
    return sum(1 for name, _ in model.named_modules() if name.endswith("lora_A"))


def loader(library: str):
    if library == "peft":
        import peft

        return peft.PeftModel.from_pretrained
    import peftkit

    return peftkit.PeftModel.from_pretrained


def time_loads(folder: str, layers: int, repeats: int, low_cpu: bool) -> dict[str, float]:
    base = base_model(layers)
    loaders = {lib: loader(lib) for lib in ("peft", "peftkit")}
    samples: dict[str, list[float]] = {lib: [] for lib in loaders}
    for round_index in range(repeats + 1):  # round 0 warms up
        for lib, load in loaders.items():
            model = copy.deepcopy(base)
            gc.collect()
            start = time.perf_counter()
            load(model, folder, low_cpu_mem_usage=low_cpu)
            elapsed = time.perf_counter() - start
            if round_index:
                samples[lib].append(elapsed)
            del model
    return {lib: statistics.median(times) for lib, times in samples.items()}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child_peak(library: str, folder: str, layers: int, low_cpu: bool) -> None:
    """(child process) Print the peak RSS growth in bytes while loading the adapter."""
    load = loader(library)
    model = base_model(layers)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = _status_kib("VmRSS")
    load(model, folder, low_cpu_mem_usage=low_cpu)
    print(json.dumps({"peak": (_status_kib("VmHWM") - before) * 1024}))


def peak_in_child(library: str, folder: str, layers: int, low_cpu: bool) -> int:
    args = [sys.executable, __file__, "--child", library, "--folder", folder, "--layers", str(layers)]
    if low_cpu:
        args.append("--low-cpu")
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", choices=["peft", "peftkit"])
    parser.add_argument("--folder")
    parser.add_argument("--low-cpu", action="store_true")
    args = parser.parse_args()
    if args.child:
        child_peak(args.child, args.folder, args.layers, args.low_cpu)
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    with tempfile.TemporaryDirectory() as folder:
        modules = save_adapter(folder, args.layers, args.rank)
        adapter_mb = os.path.getsize(os.path.join(folder, "adapter_model.safetensors")) / 2**20
        print(
            f"Llama {args.layers} layers, hidden 256, LoRA r={args.rank} all-linear: {modules} modules, "
            f"adapter file {adapter_mb:.1f} MiB"
        )
        print(
            f"{'low_cpu_mem_usage':>18} | {'peft s':>8} | {'peftkit s':>9} | {'time ratio':>10} | "
            f"{'peft peak MiB':>13} | {'peftkit peak MiB':>16} | {'mem ratio':>9}"
        )
        for low_cpu in (False, True):
            times = time_loads(folder, args.layers, args.repeats, low_cpu)
            peaks = {
                lib: peak_in_child(lib, folder, args.layers, low_cpu) / 2**20 for lib in ("peft", "peftkit")
            }
            print(
                f"{low_cpu!s:>18} | {times['peft']:8.3f} | {times['peftkit']:9.3f} | "
                f"{times['peftkit'] / times['peft']:10.2f} | {peaks['peft']:13.1f} | {peaks['peftkit']:16.1f} | "
                f"{peaks['peftkit'] / peaks['peft']:9.2f}"
            )
        print(
            "ratios are peftkit / peft (below 1: peftkit is faster / uses less memory); peak = RSS growth "
            "during the load, to compare with the adapter file size"
        )


if __name__ == "__main__":
    main()
