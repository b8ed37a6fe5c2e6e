"""AdaLoRA's rank allocation (Zhang et al., 2023, section 3): a budget schedule and sensitivity scores.

For each parameter entry w of A, B, E (with gradient g after the optimizer step):

    I = |w * g|                                   (sensitivity)
    I_bar <- beta1 * I_bar + (1 - beta1) * I       (smoothed sensitivity)
    U_bar <- beta2 * U_bar + (1 - beta2) * |I - I_bar|   (uncertainty)
    s = I_bar * U_bar

The score of triplet i of a layer is `s(E_i) + mean_j s(A_ij) + mean_j s(B_ji)`. The budget (total
number of triplets kept) is `b(0)` = the sum of the ranks up to step `tinit`, then falls cubically,

    b(t) = int((b(0) - b_T) * (1 - (t - tinit) / (T - tfinal - tinit))^3 + b_T),   b_T = target_r * layers,

reaching `b_T` at `T - tfinal`. At a masking step the `b(0) - b(t)` triplets of lowest score get `E_i = 0`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .layer import AdaLoraLayer


def rank_pattern_key(module_name: str, adapter_name: str) -> str:
    """The in-memory `rank_pattern` key of a layer (peft's spelling; saved without the adapter name)."""
    return f"{module_name}.lora_E.{adapter_name}"


def find_mask(rank_pattern: dict | None, module_name: str) -> list[bool] | None:
    """The kept-triplet mask of module `module_name`, under either key spelling (with or without the
    adapter name, as in memory or in a saved config)."""
    prefix = f"{module_name}.lora_E"
    for key, mask in (rank_pattern or {}).items():
        if key == prefix or key.startswith(prefix + "."):
            return list(mask)
    return None


class RankAllocator:
    """Budget schedule and triplet scores of the trainable AdaLoRA adapter `adapter_name` of `model`."""

    def __init__(self, model: nn.Module, peft_config, adapter_name: str) -> None:
        self.peft_config = peft_config
        self.adapter_name = adapter_name
        self.beta1, self.beta2 = peft_config.beta1, peft_config.beta2
        if not (0 < self.beta1 < 1 and 0 < self.beta2 < 1):
            raise ValueError(f"AdaLoRA beta1 and beta2 must be in (0, 1), got {self.beta1} and {self.beta2}.")
        if peft_config.deltaT < 1:
            raise ValueError(
                f"AdaLoRA deltaT (steps between allocations) must be at least 1, got {peft_config.deltaT}."
            )
        self.reset_ipt()
        self._set_budget_scheduler(model)

    def _layers(self, model: nn.Module) -> Iterator[tuple[str, AdaLoraLayer]]:
        for name, module in model.named_modules():
            if isinstance(module, AdaLoraLayer) and self.adapter_name in module.lora_E:
                yield name, module

    def _set_budget_scheduler(self, model: nn.Module) -> None:
        layers = list(self._layers(model))
        self.init_bgt = sum(layer.r[self.adapter_name] for _, layer in layers)
        self.target_bgt = self.peft_config.target_r * len(layers)
        if self.target_bgt > self.init_bgt:
            raise ValueError(
                f"AdaLoRA target budget ({self.peft_config.target_r} per layer, {self.target_bgt} in all) exceeds the "
                f"ranks there are ({self.init_bgt}): set target_r <= init_r."
            )

    def set_total_step(self, total_step: int) -> None:
        self.peft_config.total_step = total_step

    def reset_ipt(self) -> None:
        """Forget the smoothed sensitivities (done after the final allocation)."""
        self.ipt: dict[str, torch.Tensor] = {}
        self.exp_avg_ipt: dict[str, torch.Tensor] = {}
        self.exp_avg_unc: dict[str, torch.Tensor] = {}

    def budget_schedule(self, step: int) -> tuple[int, bool]:
        """(budget at `step`, whether this step masks)."""
        config = self.peft_config
        final = config.total_step - config.tfinal
        if step <= config.tinit:
            return self.init_bgt, False
        if step > final:
            return self.target_bgt, True
        progress = 1 - (step - config.tinit) / (final - config.tinit)
        budget = int((self.init_bgt - self.target_bgt) * progress**3 + self.target_bgt)
        return budget, step % config.deltaT == 0

    def update_ipt(self, model: nn.Module) -> None:
        """Update the smoothed sensitivity and uncertainty of every A, B, E entry from its gradient."""
        for name, layer in self._layers(model):
            for kind in ("lora_A", "lora_B", "lora_E"):
                param = getattr(layer, kind)[self.adapter_name]
                if param.grad is None:
                    continue
                key = f"{name}.{kind}"
                with torch.no_grad():
                    self.ipt[key] = (param * param.grad).abs()
                    if key not in self.exp_avg_ipt:
                        self.exp_avg_ipt[key] = torch.zeros_like(param)
                        self.exp_avg_unc[key] = torch.zeros_like(param)
                    self.exp_avg_ipt[key] = (
                        self.beta1 * self.exp_avg_ipt[key] + (1 - self.beta1) * self.ipt[key]
                    )
                    deviation = (self.ipt[key] - self.exp_avg_ipt[key]).abs()
                    self.exp_avg_unc[key] = self.beta2 * self.exp_avg_unc[key] + (1 - self.beta2) * deviation

    def _element_score(self, key: str) -> torch.Tensor:
        return self.exp_avg_ipt[key] * self.exp_avg_unc[key]

    def _triplet_scores(self, model: nn.Module) -> dict[str, tuple[AdaLoraLayer, torch.Tensor]]:
        scores = {}
        for name, layer in self._layers(model):
            keys = [f"{name}.{kind}" for kind in ("lora_A", "lora_B", "lora_E")]
            if not all(k in self.exp_avg_ipt for k in keys):
                continue
            score_a, score_b, score_e = (self._element_score(k) for k in keys)
            scores[name] = (layer, score_e.flatten() + score_a.mean(dim=1) + score_b.mean(dim=0))
        return scores

    def mask_to_budget(self, model: nn.Module, budget: int) -> dict[str, list[bool]]:
        """Zero the E entries of the lowest-scoring triplets so that `budget` remain; return the masks."""
        scores = self._triplet_scores(model)
        if not scores:
            return {}
        dropped = self.init_bgt - budget
        all_scores = torch.cat([s for _, s in scores.values()])
        threshold = torch.kthvalue(all_scores, dropped).values.item() if dropped > 0 else -float("inf")
        rank_pattern = {}
        with torch.no_grad():
            for name, (layer, score) in scores.items():
                keep = score > threshold
                layer.lora_E[self.adapter_name].masked_fill_(~keep.view(-1, 1), 0.0)
                rank_pattern[rank_pattern_key(name, self.adapter_name)] = keep.tolist()
        return rank_pattern

    def update_and_allocate(
        self, model: nn.Module, global_step: int, force_mask: bool = False
    ) -> tuple[int, dict[str, list[bool]] | None]:
        """Update the scores; on a masking step (or with `force_mask`) mask to the step's budget.

        Returns the budget and the rank pattern (None when nothing was masked).
        """
        if global_step < self.peft_config.total_step - self.peft_config.tfinal:
            self.update_ipt(model)
        budget, mask_now = self.budget_schedule(global_step)
        if mask_now or force_mask:
            return budget, self.mask_to_budget(model, budget)
        return budget, None

    def mask_using_rank_pattern(self, model: nn.Module, rank_pattern: dict) -> None:
        """Zero the E entries the (final) rank pattern drops."""
        with torch.no_grad():
            for name, layer in self._layers(model):
                mask = find_mask(rank_pattern, name)
                if mask is not None:
                    keep = torch.tensor(mask, device=layer.lora_E[self.adapter_name].device)
                    layer.lora_E[self.adapter_name].masked_fill_(~keep.view(-1, 1), 0.0)
