"""Shared helpers of the LoRA-family tests: building the same adapter in peft and peftkit."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

warnings.filterwarnings("ignore", message=".*kernels.*")


def both(base: nn.Module, task_type: str | None = None, **config_kwargs):
    """(peft model, peftkit model) with the same config on copies of `base` (seeded alike)."""
    import peft

    import peftkit

    torch.manual_seed(0)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(task_type=task_type, **config_kwargs))
    torch.manual_seed(0)
    ours = peftkit.get_peft_model(
        copy.deepcopy(base), peftkit.LoraConfig(task_type=task_type, **config_kwargs)
    )
    return theirs, ours


def train_steps(model: nn.Module, inputs: dict, steps: int = 3, lr: float = 1e-2) -> None:
    """A few Adam steps on the mean logit square (moves every trainable tensor)."""
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**inputs).logits.pow(2).mean().backward()
        optimizer.step()
    model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()
