"""Per-method speed: a training step and unmerged inference, peft vs peftkit, same process and weights.

For each layer method on a small random Llama (hidden 256, 4 layers), the adapter is built in both
libraries with the same weights (peft's copied into peftkit), then a training step (forward + backward)
and an inference forward are timed, interleaved, median of `--repeats`. Prints peftkit/peft time ratios
(below 1.0: peftkit is faster).

    python bench/bench_methods.py [--repeats 5] [--methods LoraConfig,IA3Config]
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import tempfile
import time
import warnings

import torch

warnings.filterwarnings("ignore")

TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]
CONFIGS = {
    "LoraConfig": {"target_modules": TARGETS, "r": 16},
    "LoraConfig+DoRA": {"target_modules": TARGETS, "r": 16, "use_dora": True},
    "IA3Config": {"target_modules": TARGETS, "feedforward_modules": ["down_proj"]},
    "LoHaConfig": {"target_modules": TARGETS, "r": 8},
    "LoKrConfig": {"target_modules": TARGETS, "r": 8},
    "OFTConfig": {"target_modules": TARGETS, "r": 0, "oft_block_size": 32},
    "BOFTConfig": {"target_modules": TARGETS, "boft_block_size": 16, "boft_n_butterfly_factor": 1},
    "AdaLoraConfig": {"target_modules": TARGETS, "init_r": 12, "target_r": 8, "total_step": 100},
    "AdamssConfig": {"target_modules": TARGETS, "r": 32, "num_subspaces": 4, "subspace_rank": 2},
    "VeraConfig": {"target_modules": ["q_proj", "v_proj"], "r": 64},
    "FourierFTConfig": {"target_modules": TARGETS, "n_frequency": 500},
    "HRAConfig": {"target_modules": TARGETS, "r": 8},
    "HiraConfig": {"target_modules": TARGETS, "r": 16},
    "LNTuningConfig": {"target_modules": ["input_layernorm", "post_attention_layernorm"]},
    "DeloraConfig": {"target_modules": TARGETS, "r": 8},
    "GraloraConfig": {"target_modules": TARGETS, "r": 16, "gralora_k": 2},
    "GraloraConfig+hybrid": {"target_modules": TARGETS, "r": 16, "gralora_k": 2, "hybrid_r": 4},
    "MissConfig": {"target_modules": TARGETS, "r": 16},
    "MissConfig+bat": {"target_modules": TARGETS, "r": 16, "init_weights": "bat"},
    "MissConfig+mini": {"target_modules": TARGETS, "r": 16, "mini_r": 16, "init_weights": "mini"},
    "ShiraConfig": {"target_modules": TARGETS, "r": 8},
    "BeftConfig": {"target_modules": ["v_proj"]},
    "FrodConfig": {"target_modules": TARGETS, "sparse_rate": 0.01, "progressbar": False},
    "LilyConfig": {"target_modules": TARGETS, "r": 16, "stride_A": 2, "num_B": 2},
    "PveraConfig": {"target_modules": ["q_proj", "v_proj"], "r": 64},
    "DeftConfig": {"target_modules": TARGETS, "r": 8},
    "ShadowConfig": {"r": 8},
    "SupertuningConfig": {"target_modules": TARGETS, "sparsity": 0.99, "r": 8},
    "RoadConfig": {"target_modules": TARGETS, "variant": "road_1", "group_size": 16},
    "UniLoraConfig": {"target_modules": TARGETS, "r": 4, "theta_d_length": 256},
    "WaveFTConfig": {"target_modules": TARGETS, "n_frequency": 500},
    "RandLoraConfig": {"target_modules": TARGETS, "r": 32},
    "TinyLoraConfig": {"target_modules": TARGETS, "r": 2, "u": 64},
    "VBLoRAConfig": {"target_modules": TARGETS, "r": 4, "num_vectors": 256, "vector_length": 16},
    "C3AConfig": {"target_modules": TARGETS, "block_size": 16},
    "PolyConfig": {"target_modules": TARGETS, "r": 8, "n_tasks": 4, "n_skills": 4, "task_type": "CAUSAL_LM"},
    "CPTConfig": {
        "task_type": "CAUSAL_LM",
        "cpt_token_ids": list(range(1, 9)),
        "cpt_mask": [1] * 8,
        "cpt_tokens_type_mask": [1, 2, 3, 4, 1, 2, 3, 4],
    },
    "CartridgeConfig": {"task_type": "CAUSAL_LM", "num_virtual_tokens": 16},
    "GloraConfig": {"target_modules": TARGETS, "r": 8},
    "OSFConfig": {"target_modules": TARGETS, "effective_rank": 0.5},
    "PeanutConfig": {"target_modules": TARGETS, "r": 16, "depth": 1},
    "PsoftConfig": {"target_modules": TARGETS, "r": 16},
}
# per-method forward inputs besides input_ids (Poly routes every sample by its task)
FORWARD_KWARGS = {"PolyConfig": {"task_ids": torch.arange(8) % 4}}
# methods whose config needs files first (X-LoRA loads its LoRA experts from folders): built when the row runs
CONFIG_FACTORIES = {"XLoraConfig": lambda base: xlora_config(base)}


@functools.cache
def _xlora_experts(base) -> dict[str, str]:
    """Two LoRA experts of `base`, saved (by peftkit, in PEFT's format) to a temporary folder."""
    import peftkit

    folder = tempfile.mkdtemp(prefix="bench-xlora-")
    experts = {}
    for number in range(2):
        torch.manual_seed(number)
        config = peftkit.LoraConfig(target_modules=TARGETS, r=8, init_lora_weights=False)
        peftkit.get_peft_model(copy.deepcopy(base), config).save_pretrained(f"{folder}/{number}")
        experts[str(number)] = f"{folder}/{number}"
    return experts


def xlora_config(base) -> dict:
    return {"task_type": "CAUSAL_LM", "hidden_size": 256, "adapters": _xlora_experts(base)}


def base_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=2000,
    )
    return LlamaForCausalLM(config)


def build(lib, base, name: str):
    cls_name = name.split("+")[0]
    kwargs = CONFIG_FACTORIES[name](base) if name in CONFIG_FACTORIES else CONFIGS[name]
    model = copy.deepcopy(base)
    if name == "XLoraConfig":
        model.config.use_cache = False  # X-LoRA reruns each sequence for its scaling pass
    return lib.get_peft_model(model, getattr(lib, cls_name)(**kwargs))


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=",".join([*CONFIGS, *CONFIG_FACTORIES]))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import peft

    import peftkit

    base = base_model()
    ids = torch.randint(0, 2000, (8, 128), generator=torch.Generator().manual_seed(0))
    print(
        f"peft {peft.__version__} vs peftkit {peftkit.__version__}; Llama hidden 256 x 4 layers; batch 8 x 128"
    )
    print(
        f"{'method':18s} {'train peft s':>12s} {'train ours s':>12s} {'ratio':>6s} {'infer peft s':>12s} {'infer ours s':>12s} {'ratio':>6s}"
    )
    for name in args.methods.split(","):
        theirs, ours = build(peft, base, name), build(peftkit, base, name)
        ours.load_state_dict(theirs.state_dict(), strict=False)

        extra = FORWARD_KWARGS.get(name, {})

        def train_step(model, extra=extra):
            model.train()
            model.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=ids, **extra).loss.backward()

        def infer(model, extra=extra):
            model.eval()
            with torch.inference_mode():
                model(input_ids=ids, **extra)

        times = interleaved(
            {
                "train peft": lambda m=theirs: train_step(m),
                "train ours": lambda m=ours: train_step(m),
                "infer peft": lambda m=theirs: infer(m),
                "infer ours": lambda m=ours: infer(m),
            },
            args.repeats,
        )
        print(
            f"{name:18s} {times['train peft']:12.3f} {times['train ours']:12.3f} "
            f"{times['train ours'] / times['train peft']:6.2f} {times['infer peft']:12.3f} "
            f"{times['infer ours']:12.3f} {times['infer ours'] / times['infer peft']:6.2f}"
        )


if __name__ == "__main__":
    main()
