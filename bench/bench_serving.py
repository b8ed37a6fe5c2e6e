"""Multi-adapter serving and training-step benchmark: peft vs peftkit, same process, same weights.

On a random SmolLM2-shaped Llama (30 layers, hidden 576, LoRA r=16 on all linear layers):
  (a) 16 different adapters in one batch of 16 sequences (`adapter_names=`)
  (b) one unmerged adapter vs the plain base model
  (c) `add_adapter` time for the 2nd..16th adapter
  (d) a training step with lora_dropout 0 and 0.05 vs a frozen base with input gradients
  (g) the same step with DoRA, and with LoRA over a 4-bit (bitsandbytes NF4) base, each vs its frozen base
Each timing is the median of `--repeats` rounds, peft and peftkit interleaved so that machine load hits
both alike; ratios are medians of per-round ratios. Prints seconds and ratios (vs the base model). Every
model computes with the base model's own weight tensors (`share_base_weights`), and each training step is
timed right after an untimed step of the same model (`interleaved(settle=True)`).

    python bench/bench_serving.py            # full size (a few minutes on 2 cores)
    python bench/bench_serving.py --layers 4 # quick check
    python bench/bench_serving.py --skip a,b,c,g --keep-freed-memory   # training steps without page faults
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import time
import warnings
from collections.abc import Callable

import torch

warnings.filterwarnings("ignore")


def smollm2_shaped(layers: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def interleaved(
    fns: dict, repeats: int, settle: bool = False, clock: Callable[[], float] = time.perf_counter
) -> dict:
    """Each function's times over `repeats` rounds, run round-robin (after one warm-up round), so that the
    machine's drift hits every function of a round alike. `settle`: run each function once, untimed, right
    before its timed run, as a training loop repeats its step: otherwise a step is timed in the memory the
    previous function left (a step after one that freed gigabytes of temporaries pays page faults for
    memory it would have reused in its own loop). `clock`: wall time, or `time.process_time` (CPU time,
    with one thread: no thread-pool spinning)."""
    for fn in fns.values():
        fn()
    samples: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            if settle:
                fn()
            start = clock()
            fn()
            samples[key].append(clock() - start)
    return samples


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(samples: dict[str, list[float]], key: str, reference: str) -> float:
    """Median over rounds of time(key) / time(reference) in the same round: steadier than a ratio of
    medians when the machine's speed drifts between rounds."""
    return statistics.median(a / b for a, b in zip(samples[key], samples[reference]))


def lora_config(lib, dropout: float = 0.0, init: bool = False):
    """r=16 on all linear layers; init=False gives random (non-zero) B so outputs differ per adapter."""
    return lib.LoraConfig(
        r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=dropout, init_lora_weights=init
    )


def build(lib, base, n_adapters: int, dropout: float = 0.0):
    model = lib.get_peft_model(copy.deepcopy(base), lora_config(lib, dropout), adapter_name="adapter0")
    for i in range(1, n_adapters):
        model.add_adapter(f"adapter{i}", lora_config(lib, dropout))
    return share_base_weights(base, model)


def share_base_weights(base, model):
    """`model` (a peft or peftkit model wrapping a copy of `base`) computing with `base`'s own weight
    tensors. Two copies of the same weights can run the same GEMMs several percent apart (where the
    allocator placed them: page and cache alignment, huge pages); sharing them makes "vs the base model"
    compare computations, not memory placement. Returns `model`."""
    weights = dict(base.named_parameters(remove_duplicate=False))
    for module_name, module in model.get_base_model().named_modules():
        for name, param in list(module._parameters.items()):
            key = f"{module_name}.{name}".replace(".base_layer", "")
            if param is not None and key in weights and weights[key].shape == param.shape:
                module._parameters[name] = weights[key]
    return model


def bench_inference(base, repeats: int, batch: int, length: int) -> list[tuple[str, float, float]]:
    import peft

    import peftkit

    ids = torch.randint(0, 1000, (batch, length), generator=torch.Generator().manual_seed(0))
    theirs, ours = build(peft, base, 16), build(peftkit, base, 16)
    theirs.load_state_dict(ours.state_dict())  # same weights in both
    theirs.eval()
    ours.eval()
    names = [f"adapter{i}" for i in range(batch)] if batch <= 16 else None

    def run(model, **kwargs):
        with torch.inference_mode():
            return model(input_ids=ids, **kwargs).logits

    with torch.inference_mode():
        torch.testing.assert_close(
            run(ours, adapter_names=names), run(theirs, adapter_names=names), atol=1e-4, rtol=1e-4
        )
    samples = interleaved(
        {
            "base": lambda: run(base),
            "peft single": lambda: run(theirs),
            "peftkit single": lambda: run(ours),
            "peft mixed16": lambda: run(theirs, adapter_names=names),
            "peftkit mixed16": lambda: run(ours, adapter_names=names),
        },
        repeats,
    )
    return [
        (
            "(a) 16 adapters in one batch: peft",
            median(samples["peft mixed16"]),
            paired_ratio(samples, "peft mixed16", "base"),
        ),
        (
            "(a) 16 adapters in one batch: peftkit",
            median(samples["peftkit mixed16"]),
            paired_ratio(samples, "peftkit mixed16", "base"),
        ),
        (
            "(a) throughput peftkit / peft",
            paired_ratio(samples, "peft mixed16", "peftkit mixed16"),
            float("nan"),
        ),
        ("(b) base model", median(samples["base"]), 1.0),
        (
            "(b) one unmerged adapter: peft",
            median(samples["peft single"]),
            paired_ratio(samples, "peft single", "base"),
        ),
        (
            "(b) one unmerged adapter: peftkit",
            median(samples["peftkit single"]),
            paired_ratio(samples, "peftkit single", "base"),
        ),
    ]


def bench_add_adapter(base, repeats: int) -> list[tuple[str, float, float]]:
    import peft

    import peftkit

    samples: dict[str, list[float]] = {"peft": [], "peftkit": []}
    for _ in range(repeats):  # fresh models each round, the libraries interleaved
        for name, lib in (("peft", peft), ("peftkit", peftkit)):
            model = lib.get_peft_model(
                copy.deepcopy(base), lora_config(lib, init=True), adapter_name="adapter0"
            )
            # collect the deep copy's garbage now, or its first full collection lands in the timed loop
            gc.collect()
            start = time.perf_counter()
            for i in range(1, 16):
                model.add_adapter(f"adapter{i}", lora_config(lib, init=True))
            samples[name].append((time.perf_counter() - start) / 15)
            del model
    results = {name: median(values) for name, values in samples.items()}
    return [
        ("(c) add_adapter, per adapter: peft", results["peft"], float("nan")),
        ("(c) add_adapter, per adapter: peftkit", results["peftkit"], float("nan")),
        ("(c) speed-up peftkit vs peft", results["peft"] / results["peftkit"], float("nan")),
    ]


def training_steps(base, libraries, dropouts, batch: int, length: int) -> dict[str, Callable[[], None]]:
    """A training step of the frozen base (input gradients only) and of each library's LoRA model per
    dropout (keys "frozen base" and "<label> dropout=<p>"), all on the base model's own weights."""
    ids = torch.randint(0, 1000, (batch, length), generator=torch.Generator().manual_seed(1))

    def step(model):
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()

    frozen = copy.deepcopy(base).train()
    frozen.requires_grad_(False)
    frozen.enable_input_require_grads()  # what gradient flow through a frozen base costs
    fns = {"frozen base": lambda: step(frozen)}
    for dropout in dropouts:
        for label, lib in libraries:
            model = lib.get_peft_model(copy.deepcopy(base), lora_config(lib, dropout))
            model = share_base_weights(frozen, model).train()
            fns[f"{label} dropout={dropout}"] = lambda m=model: step(m)
    return fns


def bench_training(base, repeats: int, batch: int, length: int) -> list[tuple[str, float, float]]:
    import peft

    import peftkit

    fns = training_steps(base, (("peft", peft), ("peftkit", peftkit)), (0.0, 0.05), batch, length)
    samples = interleaved(fns, repeats, settle=True)
    rows = [("(d) frozen base, input grads", median(samples["frozen base"]), 1.0)]
    for key, values in samples.items():
        if key != "frozen base":
            rows.append(
                (f"(d) training step {key}", median(values), paired_ratio(samples, key, "frozen base"))
            )
    return rows


def quantized_copy(base):
    """`base` loaded again with 4-bit NF4 linear layers (bitsandbytes, on the CPU)."""
    import tempfile

    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    with tempfile.TemporaryDirectory() as folder:
        base.save_pretrained(folder)
        config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
        return AutoModelForCausalLM.from_pretrained(
            folder, quantization_config=config, device_map={"": "cpu"}
        )


def bench_training_variants(base, repeats: int, batch: int, length: int) -> list[tuple[str, float, float]]:
    """(g) DoRA, and LoRA on a 4-bit quantized base, each against its own frozen base (no goal: reported)."""
    import peft

    import peftkit

    ids = torch.randint(0, 1000, (batch, length), generator=torch.Generator().manual_seed(1))

    def step(model):
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()

    def frozen(model):
        model.train().requires_grad_(False)
        model.enable_input_require_grads()
        return model

    rows = []
    cases = {
        "DoRA": (lambda: copy.deepcopy(base), {"use_dora": True}),
        "LoRA on a 4-bit base": (lambda: quantized_copy(base), {}),
    }
    for label, (make_base, extra) in cases.items():
        reference = frozen(make_base())
        fns = {"frozen base": (lambda m=reference: step(m))}
        for name, lib in (("peft", peft), ("peftkit", peftkit)):
            config = lib.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", **extra)
            model = lib.get_peft_model(make_base(), config).train()
            fns[name] = lambda m=model: step(m)
        samples = interleaved(fns, repeats)
        for name in ("peft", "peftkit"):
            rows.append(
                (
                    f"(g) {label} step: {name}",
                    median(samples[name]),
                    paired_ratio(samples, name, "frozen base"),
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma list of parts to skip: a,b,c,d,g")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="glibc's malloc keeps freed memory (peftkit.utils.memory: no page faults for each step's "
        "large tensors, which otherwise hide differences of a few percent)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        from peftkit.utils.memory import keep_freed_memory

        keep_freed_memory()
    import peft

    import peftkit

    base = smollm2_shaped(args.layers)
    print(
        f"peft {peft.__version__} vs peftkit {peftkit.__version__}, torch {torch.__version__}, {args.threads} threads, "
        f"{args.layers} layers, hidden 576, LoRA r=16 all-linear"
        + (", malloc keeps freed memory" if args.keep_freed_memory else "")
    )
    rows = []
    skip = set(args.skip.split(","))
    if not {"a", "b"} <= skip:
        rows += bench_inference(base, args.repeats, batch=16, length=64)
    if "c" not in skip:
        rows += bench_add_adapter(base, args.repeats)
    if "d" not in skip:
        rows += bench_training(base, args.repeats, batch=4, length=256)
    if "g" not in skip:
        rows += bench_training_variants(base, args.repeats, batch=4, length=256)
    print(f"{'measurement':48s} {'seconds/ratio':>14s} {'vs base':>8s}")
    for label, value, ratio in rows:
        print(f"{label:48s} {value:14.3f} {ratio:8.3f}")


if __name__ == "__main__":
    main()
