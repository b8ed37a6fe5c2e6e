"""Helpers shared by the persistence tests: save the same adapter with peft and peftkit, read files back."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors import safe_open
from tests.conftest import make_pair
from torch import nn

ATOL = 1e-6  # COMPAT.md section 4: fp32 outputs equal to peft's within 1e-6


def save_both(tmp_path: Path, model_fn, config_kwargs: dict, task_type: str | None = None, **save_kwargs):
    """peft and peftkit hold the same (perturbed) adapter; each saves it. Returns (base, theirs, ours, peft_dir, kit_dir)."""
    base, theirs, ours = make_pair(model_fn, config_kwargs, task_type=task_type)
    peft_dir, kit_dir = tmp_path / "saved_by_peft", tmp_path / "saved_by_peftkit"
    theirs.save_pretrained(peft_dir, **save_kwargs)
    ours.save_pretrained(kit_dir, **save_kwargs)
    return base, theirs, ours, peft_dir, kit_dir


def file_layout(
    folder: Path, name: str = "adapter_model.safetensors"
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """key -> (shape, dtype) of a safetensors adapter file."""
    with safe_open(str(folder / name), framework="pt") as f:
        return {k: (tuple(f.get_tensor(k).shape), f.get_tensor(k).dtype) for k in f.keys()}  # noqa: SIM118


def file_tensors(folder: Path, name: str = "adapter_model.safetensors") -> dict[str, torch.Tensor]:
    with safe_open(str(folder / name), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def read_config(folder: Path) -> dict:
    return json.loads((folder / "adapter_config.json").read_text())


def fresh(base: nn.Module) -> nn.Module:
    return copy.deepcopy(base)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def tiny_tokenizer(size: int):
    """A word-level fast tokenizer with `size` tokens, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(size)}, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0", pad_token="w1")
