"""AdamssModel: the AdaMSS tuner (nn.Linear layers) and adaptive subspace allocation (ASA)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..tuners_utils import BaseTuner
from .config import AdamssConfig
from .layer import AdamssLayer, Linear


class AdamssModel(BaseTuner):
    """Adds AdaMSS to `nn.Linear` layers (bitsandbytes' quantized ones too, on their dequantized weight).

    With `use_asa=True`, call `update_and_allocate(global_step)` after every `loss.backward()` (before
    `optimizer.zero_grad()`), or train with `peftkit.tuners.adamss.asa_callback.AdamssAsaCallback`.

    Example:
        >>> from peftkit import AdamssConfig, get_peft_model
        >>> model = get_peft_model(model, AdamssConfig(r=100, num_subspaces=5, target_modules=["q_proj", "v_proj"]))
    """

    prefix = "adamss_"
    tuner_layer_cls = AdamssLayer
    layer_classes = {nn.Linear: Linear}

    def _layer_kwargs(self, config: AdamssConfig, key: str) -> dict[str, Any]:
        return {"r": config.r, "config": config}

    # ----- adaptive subspace allocation -----
    def _asa_layers(self, adapter_name: str) -> list[AdamssLayer]:
        return [
            m for m in self.model.modules() if isinstance(m, AdamssLayer) and adapter_name in m.exp_avg_ipt_A
        ]

    def _asa_total_subspaces(self, adapter_name: str) -> int:
        """Every subspace of `adapter_name` in the model (the count ASA prunes down from)."""
        return sum(
            m.num_subspaces.get(adapter_name, 0) for m in self.model.modules() if isinstance(m, AdamssLayer)
        )

    def update_and_allocate(self, global_step: int) -> None:
        """One ASA step for every active adapter with `use_asa`: between `init_warmup` and `final_warmup`,
        fold the gradients into the subspace scores; every `mask_interval` steps there, keep only the
        best-scored subspaces trainable (fewer as training goes on) and start the scores afresh."""
        for adapter_name in self.active_adapters:
            config = self.peft_config[adapter_name]
            if not config.use_asa:
                continue
            layers = self._asa_layers(adapter_name)
            if not layers or not config.init_warmup <= global_step <= config.final_warmup:
                continue
            for layer in layers:
                layer.update_importance(adapter_name, config.asa_importance_beta, config.asa_uncertainty_beta)
            if global_step % config.mask_interval == 0:
                target = self._schedule_threshold(global_step, config, adapter_name)
                if target is not None:
                    self._global_mask_to_target(target, adapter_name, layers)
                for layer in layers:
                    layer.reset_importance(adapter_name)

    def _schedule_threshold(
        self, step: int, config: AdamssConfig, adapter_name: str | None = None
    ) -> int | None:
        """How many subspaces stay trainable at `step`: all of them at `init_warmup`, falling as
        `(1 - progress) ** asa_schedule_exponent` to `asa_target_subspaces` at `final_warmup`."""
        total = self._asa_total_subspaces(adapter_name or self.active_adapters[0])
        if total == 0 or step < config.init_warmup:
            return None
        if step > config.final_warmup:
            return config.asa_target_subspaces
        remaining = 1.0 - (step - config.init_warmup) / (config.final_warmup - config.init_warmup)
        remaining = max(0.0, min(1.0, remaining))
        target = config.asa_target_subspaces
        return int(target + (total - target) * remaining**config.asa_schedule_exponent)

    def _global_mask_to_target(
        self, target_subspaces: int, adapter_name: str, asa_layers: list[AdamssLayer]
    ) -> None:
        """Over all layers, keep trainable the subspaces scored above the `target_subspaces`-th best score
        (as PEFT compares: strictly above it) and freeze the rest."""
        scored = [
            (layer, k, score) for layer in asa_layers for k, score in layer.subspace_scores(adapter_name)
        ]
        if not scored:
            return
        scores = torch.stack([score for _, _, score in scored])
        if target_subspaces >= len(scored):
            threshold = float("-inf")
        else:
            threshold = torch.topk(scores, target_subspaces).values[-1].item()
        for layer, k, score in scored:
            layer.set_subspace_trainable(adapter_name, k, float(score) > threshold)
