"""The Poly router: per task, a soft selection of skills (names as PEFT's `poly/router.py`).

    p = sigmoid(logits[task])               (eval)
    p ~ RelaxedBernoulli(1.0, logits[task])  (training: a differentiable sample)
    weights = p / (sum over skills of p + 1e-12)

`module_logits` holds one row of `n_splits * n_skills` logits per task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn
from torch.distributions.relaxed_bernoulli import RelaxedBernoulli

from .config import PolyConfig

EPS = 1e-12


class Router(nn.Module, ABC):
    """A module that maps task ids (and the layer input) to mixing weights over skills."""

    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def forward(self, task_ids: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor: ...


class PolyRouter(Router):
    """Poly's router: learned logits per (task, split, skill); weights (batch, n_splits, n_skills)."""

    def __init__(self, poly_config: PolyConfig) -> None:
        super().__init__()
        self.poly_type = poly_config.poly_type
        self.n_tasks = poly_config.n_tasks
        self.n_skills = poly_config.n_skills
        self.n_splits = poly_config.n_splits
        self.module_logits = nn.Parameter(torch.empty((self.n_tasks, self.n_splits * self.n_skills)))

    def reset(self) -> None:
        nn.init.uniform_(self.module_logits, -1e-3, 1e-3)

    def forward(self, task_ids: torch.Tensor | None, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        if task_ids is None:
            raise ValueError(
                "task_ids should not be None: Poly routes each sample by its task; pass task_ids (a LongTensor "
                "with one task index per sample) to forward() and generate()."
            )
        task_ids = torch.as_tensor(task_ids).to(self.module_logits.device)
        if task_ids.numel() and (task_ids.max().item() >= self.n_tasks or task_ids.min().item() < 0):
            raise ValueError(
                f"Only {self.n_tasks} tasks available (task_ids 0..{self.n_tasks - 1}). Found task ids "
                f"{sorted(set(task_ids.tolist()))}; raise n_tasks in the PolyConfig."
            )
        logits = self.module_logits[task_ids].view(-1, self.n_splits, self.n_skills)
        if self.training:
            probabilities = RelaxedBernoulli(temperature=1.0, logits=logits).rsample()
        else:
            probabilities = torch.sigmoid(logits)
        return probabilities / (probabilities.sum(dim=-1, keepdim=True) + EPS)


def get_router(poly_config: PolyConfig) -> nn.Module:
    """The router `poly_config.poly_type` names."""
    if poly_config.poly_type == "poly":
        return PolyRouter(poly_config)
    raise ValueError(f"Unsupported poly_type: {poly_config.poly_type!r}; only 'poly' is supported.")
