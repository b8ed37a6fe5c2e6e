"""MultitaskPromptEmbedding: a shared prompt times a per-task low-rank matrix."""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file
from torch import nn

from ..prompt_tuning.model import PromptEmbedding
from .config import MultitaskPromptTuningConfig, MultitaskPromptTuningInit


def load_source_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A trained multitask adapter's tensors, read safely: safetensors, or a torch file with
    `weights_only=True` (never an arbitrary pickle)."""
    if str(path).endswith(".safetensors"):
        return load_file(path, device="cpu")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompt_tuning_init_state_dict_path {path!r} does not exist.")
    return torch.load(path, map_location="cpu", weights_only=True)


class MultitaskPromptEmbedding(PromptEmbedding):
    """`forward(indices, task_ids)` = `embedding(indices) * (prefix_task_cols[task] @ prefix_task_rows[task])`.

    `prefix_task_cols`: (num_tasks, total_virtual_tokens, num_ranks), `prefix_task_rows`:
    (num_tasks, num_ranks, token_dim), both drawn from N(0, 0.02); `embedding` starts as in prompt tuning
    (RANDOM or TEXT) or from a source adapter.
    """

    def __init__(self, config: MultitaskPromptTuningConfig, word_embeddings: nn.Module) -> None:
        super().__init__(config, word_embeddings)
        total = config.num_virtual_tokens * config.num_transformer_submodules
        self.num_tasks = config.num_tasks
        self.num_ranks = config.num_ranks
        self.prefix_task_cols = nn.Parameter(
            torch.normal(0, 0.02, size=(self.num_tasks, total, self.num_ranks))
        )
        self.prefix_task_rows = nn.Parameter(
            torch.normal(0, 0.02, size=(self.num_tasks, self.num_ranks, config.token_dim))
        )
        if not config.inference_mode and config.prompt_tuning_init in (
            MultitaskPromptTuningInit.AVERAGE_SOURCE_TASKS,
            MultitaskPromptTuningInit.EXACT_SOURCE_TASK,
            MultitaskPromptTuningInit.ONLY_SOURCE_SHARED,
        ):
            self._init_from_source(config)

    def _init_from_source(self, config: MultitaskPromptTuningConfig) -> None:
        source = load_source_state_dict(config.prompt_tuning_init_state_dict_path)
        init = config.prompt_tuning_init
        values = {"embedding.weight": source["prompt_embeddings"]}
        if init != MultitaskPromptTuningInit.ONLY_SOURCE_SHARED:
            cols, rows = source["prefix_task_cols"], source["prefix_task_rows"]
            if init == MultitaskPromptTuningInit.AVERAGE_SOURCE_TASKS:
                cols, rows = cols.mean(0, keepdim=True), rows.mean(0, keepdim=True)
            else:
                task = config.prompt_tuning_init_task
                cols, rows = cols[task : task + 1], rows[task : task + 1]
            if self.num_tasks != 1:
                raise ValueError(
                    f"prompt_tuning_init={init.value} gives the factors of one task, but num_tasks={self.num_tasks}: "
                    "set num_tasks=1, or use ONLY_SOURCE_SHARED to copy just the shared prompt."
                )
            values.update(prefix_task_cols=cols, prefix_task_rows=rows)
        self.load_state_dict(values, strict=False)

    def forward(self, indices: torch.Tensor, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        if task_ids is None:
            raise ValueError("task_ids cannot be None: pass one task index per sample.")
        prompts = self.embedding(indices)
        task_prompts = torch.matmul(self.prefix_task_cols[task_ids], self.prefix_task_rows[task_ids])
        return prompts * task_prompts
