"""Poly layers: a bank of LoRA skills per layer, mixed per sample by the task's router weights.

For a sample of task t with router weights w (n_splits x n_skills, see `router.py`), each split q of the
input (size in / n_splits) and of the output (size out / n_splits) gets the mixed factors

    A_q = sum_s w[q, s] A[q, s]    (in / n_splits x r)      B_q = sum_s w[q, s] B[q, s]    (r x out / n_splits)
    A = [A_1; ...; A_Q]  (in x r, splits stacked)            B = [B_1 ... B_Q] interleaved per rank row (r x out)
    y = W x + b + (x A B) / r

`task_ids` (one per sample) reach the layer through the tuner (`PolyModel.forward/generate`) or as a
keyword of the layer's own forward. The weight change depends on the sample, so Poly cannot be merged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..tuners_utils import BASE_ADAPTER_NAME, BaseTunerLayer
from .config import PolyConfig
from .router import get_router


def _kaiming_rows(rows: int, cols: int) -> torch.Tensor:
    """A (rows x cols) matrix initialised like nn.Linear's weight (Kaiming uniform, a = sqrt(5))."""
    matrix = torch.empty((rows, cols))
    nn.init.kaiming_uniform_(matrix, a=math.sqrt(5))
    return matrix


class PolyLayer(BaseTunerLayer):
    """State shared by Poly layer kinds: the skill banks, the routers and their sizes, per adapter."""

    adapter_layer_names = ("poly_lora_A", "poly_lora_B", "poly_router")
    other_param_names = ("r", "n_tasks", "n_skills", "n_splits", "poly_type")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.r: dict[str, int] = {}
        self.n_tasks: dict[str, int] = {}
        self.n_skills: dict[str, int] = {}
        self.n_splits: dict[str, int] = {}
        self.poly_type: dict[str, str] = {}
        self.poly_router = nn.ModuleDict()
        self.poly_lora_A = nn.ParameterDict()
        self.poly_lora_B = nn.ParameterDict()
        self.kwargs = kwargs
        self._task_ids: torch.Tensor | None = None  # set for one forward by the tuner or the caller
        base = self.get_base_layer()
        self.in_features, self.out_features = base.in_features, base.out_features

    def update_layer(
        self, adapter_name: str, config: PolyConfig, inference_mode: bool = False, **kwargs: Any
    ) -> None:
        """Create adapter `adapter_name`: its skill bank A (splits, skills, in/splits, r), B (splits,
        skills, r, out/splits) and its router."""
        if config.r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {config.r}")
        for what, size in (("input", self.in_features), ("output", self.out_features)):
            if size % config.n_splits != 0:
                raise ValueError(
                    f"n_splits={config.n_splits} must divide the {what} size of every target, but this layer's is "
                    f"{size}; choose n_splits that divides both the input and output sizes."
                )
        self.r[adapter_name] = config.r
        self.n_tasks[adapter_name] = config.n_tasks
        self.n_skills[adapter_name] = config.n_skills
        self.n_splits[adapter_name] = config.n_splits
        self.poly_type[adapter_name] = config.poly_type
        splits, skills, r = config.n_splits, config.n_skills, config.r
        self.poly_lora_A[adapter_name] = nn.Parameter(
            torch.empty(splits, skills, self.in_features // splits, r)
        )
        self.poly_lora_B[adapter_name] = nn.Parameter(
            torch.empty(splits, skills, r, self.out_features // splits)
        )
        self.poly_router[adapter_name] = get_router(config)
        self.reset_poly_parameters(adapter_name, init_weights=config.init_weights)
        self._finish_new_adapter(adapter_name, inference_mode)

    @torch.no_grad()
    def reset_poly_parameters(self, adapter_name: str, init_weights: bool) -> None:
        """Each skill's A like an nn.Linear weight (drawn skill by skill, split by split, as PEFT draws
        them); B zeros (or drawn like A with `init_weights=False`); router logits U(-1e-3, 1e-3)."""
        if adapter_name not in self.poly_lora_A:
            return
        lora_A, lora_B = self.poly_lora_A[adapter_name], self.poly_lora_B[adapter_name]
        splits, skills, fan_in, r = lora_A.shape
        for skill in range(skills):
            for split in range(splits):
                lora_A[split, skill] = _kaiming_rows(r, fan_in).T
        if init_weights:
            lora_B.zero_()
        else:
            fan_out = lora_B.shape[-1]
            for skill in range(skills):
                for split in range(splits):
                    lora_B[split, skill] = _kaiming_rows(fan_out, r).T
        self.poly_router[adapter_name].reset()

    def _check_mergeable(self) -> None:
        raise ValueError(
            "Poly adapters cannot be merged: the weight change is a mixture of skills chosen per sample by its "
            "task_ids, so there is no single weight to merge. Use unload() to remove them."
        )

    def __repr__(self) -> str:
        return "poly." + super().__repr__()


class Linear(PolyLayer, nn.Module):
    """Poly on `nn.Linear`."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: PolyConfig, **kwargs: Any) -> None:
        nn.Module.__init__(self)
        PolyLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def forward(
        self, x: torch.Tensor, *args: Any, task_ids: torch.Tensor | None = None, **kwargs: Any
    ) -> Any:
        """`task_ids` given here take precedence over those the tuner set for this forward."""
        if task_ids is None:
            return super().forward(x, *args, **kwargs)
        previous, self._task_ids = self._task_ids, task_ids
        try:
            return super().forward(x, *args, **kwargs)
        finally:
            self._task_ids = previous

    def _task_ids_for(self, batch: int) -> torch.Tensor | None:
        """The task ids of a batch of `batch` samples: beam search / several return sequences repeat
        every sample, so its task id is repeated with it."""
        if self._task_ids is None:
            return None
        task_ids = torch.as_tensor(self._task_ids)
        given = task_ids.shape[0] if task_ids.dim() else 1
        if task_ids.dim() and given and given != batch and batch % given == 0:
            return task_ids.repeat_interleave(batch // given)
        return task_ids

    def _mixed_factors(self, adapter_name: str, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample, A (in x r) and B (r x out) mixed from the skill bank with `weights` (batch, Q, S)."""
        batch, r = weights.shape[0], self.r[adapter_name]
        lora_A = torch.einsum("bqs,qsdr->bqdr", weights, self.poly_lora_A[adapter_name])
        lora_B = torch.einsum("bqs,qsrd->bqrd", weights, self.poly_lora_B[adapter_name])
        return lora_A.reshape(batch, self.in_features, r), lora_B.transpose(1, 2).reshape(
            batch, r, self.out_features
        )

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        router = self.poly_router[adapter_name]
        weights = router(task_ids=self._task_ids_for(x.shape[0]), input_ids=x)
        if weights.shape[0] != x.shape[0]:
            raise ValueError(
                f"task_ids has {weights.shape[0]} entries for a batch of {x.shape[0]} samples; pass one task id per sample."
            )
        lora_A, lora_B = self._mixed_factors(adapter_name, weights)
        x = self._cast_input_dtype(x, lora_A.dtype)
        flat = x.reshape(x.shape[0], -1, self.in_features)
        output = flat.bmm(lora_A).bmm(lora_B) / self.r[adapter_name]
        # added in the adapter's precision, rounded once into the output's dtype (PEFT adds in place)
        return output.reshape(*x.shape[:-1], self.out_features)

    def _add_mixed_batch_outputs(
        self, x: torch.Tensor, result: torch.Tensor, adapter_names: list[str]
    ) -> torch.Tensor:
        """Each group of samples sharing an adapter is routed by those samples' task ids."""
        original, task_ids = self._task_ids, self._task_ids_for(x.shape[0])
        groups: dict[str, list[int]] = {}
        for index, name in enumerate(adapter_names):
            groups.setdefault(name, []).append(index)
        try:
            for name, indices in groups.items():
                if name == BASE_ADAPTER_NAME or not self.has_adapter(name):
                    continue
                rows = torch.tensor(indices, device=result.device)
                self._task_ids = None if task_ids is None else task_ids[rows.to(task_ids.device)]
                part = result[rows]
                result = result.index_copy(
                    0, rows, self._apply_adapter(name, x[rows], part, part).to(result.dtype)
                )
        finally:
            self._task_ids = original
        return result
