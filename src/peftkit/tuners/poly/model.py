"""PolyModel: the Poly tuner. Its forward and generate take `task_ids`, which route every sample."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..tuners_utils import BaseTuner
from .config import PolyConfig
from .layer import Linear, PolyLayer


class PolyModel(BaseTuner):
    """Adds Poly (a routed bank of LoRA skills) to `nn.Linear` layers.

    `forward(..., task_ids=...)` and `generate(..., task_ids=...)` take one task index per sample; the
    PeftModel task classes hand them over (see `BaseTuner.takes_task_ids`).

    Example:
        >>> from peftkit import PolyConfig, get_peft_model
        >>> config = PolyConfig(task_type="SEQ_2_SEQ_LM", r=8, n_tasks=4, n_skills=2, n_splits=4)
        >>> model = get_peft_model(model, config)
        >>> model(**batch, task_ids=torch.tensor([0, 3]))
    """

    prefix = "poly_"
    tuner_layer_cls = PolyLayer
    layer_classes = {nn.Linear: Linear}
    takes_task_ids = True

    def _layer_kwargs(self, config: PolyConfig, key: str) -> dict[str, Any]:
        return {"config": config}

    @contextmanager
    def _task_routing(self, task_ids: torch.Tensor | None) -> Iterator[None]:
        """Every Poly layer routes by `task_ids` for the duration of one call."""
        layers = [m for m in self.model.modules() if isinstance(m, PolyLayer)]
        previous = [layer._task_ids for layer in layers]
        for layer in layers:
            layer._task_ids = task_ids
        try:
            yield
        finally:
            for layer, ids in zip(layers, previous):
                layer._task_ids = ids

    def forward(self, *args: Any, task_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
        with self._task_routing(task_ids):
            return self.model(*args, **kwargs)

    def generate(self, *args: Any, task_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
        with self._task_routing(task_ids):
            return self.model.generate(*args, **kwargs)
