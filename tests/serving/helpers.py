"""Adapters for the serving tests: a tiny Llama and a few LoRA adapters with random (non-zero) factors,
saved to folders."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from tests.conftest import tiny_llama

import peftkit


def save_random_adapters(base, root: Path, count: int, r: int = 4, seed: int = 0) -> list[str]:
    """Save `count` LoRA adapters (all-linear, random A and B, ranks alternating r and 2r) under
    `root/<name>`; returns their names."""
    names = []
    for i in range(count):
        torch.manual_seed(seed + i)
        config = peftkit.LoraConfig(
            r=r if i % 2 == 0 else 2 * r,
            lora_alpha=8,
            target_modules="all-linear",
            init_lora_weights=False,  # random B: each adapter changes the output
            task_type="CAUSAL_LM",
        )
        peftkit.get_peft_model(copy.deepcopy(base), config).save_pretrained(root / f"a{i}")
        names.append(f"a{i}")
    return names


def tiny_base(seed: int = 0):
    return tiny_llama(seed=seed).eval()
