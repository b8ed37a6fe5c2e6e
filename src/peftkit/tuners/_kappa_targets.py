"""KappaTune: pick LoRA targets by the condition number of their weights.

The condition number `kappa = s_max / (s_min + 1e-8)` (largest over smallest singular value) says how
unevenly a weight stretches its inputs. Layers with small kappa are the better-conditioned ones to adapt;
the selector ranks the model's `nn.Linear` layers (bitsandbytes layers dequantized) and fused
mixture-of-experts weights (3-D parameters, one matrix per expert: the mean of the experts' kappas) by
kappa, smallest first. Matrices with a side longer than `max_dim_size_to_analyze` are skipped (the SVD
would take too long).
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from ._quantized import dense_weight

_DEFAULT_MOE_SUFFIXES = (".gate_up_proj", ".down_proj", ".gate_proj", ".up_proj")


def condition_number(matrix: torch.Tensor) -> float:
    """s_max / (s_min + 1e-8) of a 2-D matrix (computed in fp32)."""
    singular_values = torch.linalg.svdvals(matrix.float())
    return (singular_values[0] / (singular_values[-1] + 1e-8)).item()


def _best(
    kappas: dict[str, float], top_p: float | None, num_modules: int | None, threshold: float | None
) -> list[str]:
    ranked = sorted(kappas.items(), key=lambda item: item[1])
    if num_modules is not None:
        return [name for name, _ in ranked[: min(num_modules, len(ranked))]]
    if top_p is not None:
        return [name for name, _ in ranked[: max(1, int(len(ranked) * top_p))]]
    if threshold is not None:
        return [name for name, kappa in ranked if kappa <= threshold]
    return [name for name, _ in ranked]


class KappaTuneSelector:
    """Computes the condition numbers of a model's linear layers and fused MoE weights (once, on first
    use) and returns the best-conditioned ones: module names for `target_modules`
    (`get_best_targets`), parameter names for `target_parameters` (`get_best_target_parameters`).

    Args:
        model: the base model to analyse.
        max_dim_size_to_analyze: skip matrices with a side longer than this.
        moe_param_suffixes: name endings of fused MoE weights (default: gate_up_proj, down_proj, gate_proj,
            up_proj).
        show_progress: show progress bars over the SVDs.
    """

    def __init__(
        self,
        model: nn.Module,
        max_dim_size_to_analyze: int = 16384,
        moe_param_suffixes: tuple[str, ...] | None = None,
        show_progress: bool = True,
    ) -> None:
        self.model = model
        self.max_dim_size_to_analyze = max_dim_size_to_analyze
        self.moe_param_suffixes = moe_param_suffixes or _DEFAULT_MOE_SUFFIXES
        self.show_progress = show_progress
        self._condition_numbers: dict[str, float] | None = None
        self._parameter_condition_numbers: dict[str, float] | None = None

    def _too_large(self, shape: tuple[int, ...] | torch.Size) -> bool:
        return any(size > self.max_dim_size_to_analyze for size in shape)

    def _compute_kappas(self) -> None:
        if self._condition_numbers is not None:
            return
        linears = [(n, m) for n, m in self.model.named_modules() if isinstance(m, nn.Linear)]
        kappas: dict[str, float] = {}
        for name, module in tqdm(
            linears, desc="Computing SVD (linear layers)", disable=not self.show_progress
        ):
            weight = dense_weight(module).detach()  # dequantized for a quantized layer
            if not self._too_large(weight.shape):
                kappas[name] = condition_number(weight.reshape(weight.shape[0], -1))
        self._condition_numbers = kappas
        experts = [
            (n, p)
            for n, p in self.model.named_parameters()
            if p.dim() == 3 and n.endswith(tuple(self.moe_param_suffixes))
        ]
        expert_kappas: dict[str, float] = {}
        for name, param in tqdm(
            experts, desc="Computing SVD (MoE parameters)", disable=not self.show_progress
        ):
            if not self._too_large(param.shape[1:]):
                per_expert = [condition_number(matrix) for matrix in param.detach()]
                expert_kappas[name] = sum(per_expert) / len(per_expert)
        self._parameter_condition_numbers = expert_kappas

    def get_best_targets(
        self, top_p: float | None = None, num_modules: int | None = None, threshold: float | None = None
    ) -> list[str]:
        """Linear module names, smallest kappa first: the `num_modules` best, else the best fraction
        `top_p` (at least one), else those with kappa <= `threshold`, else all."""
        self._compute_kappas()
        return _best(self._condition_numbers, top_p, num_modules, threshold)

    def get_best_target_parameters(
        self, top_p: float | None = None, num_modules: int | None = None, threshold: float | None = None
    ) -> list[str]:
        """Fused MoE parameter names, chosen as `get_best_targets` chooses modules."""
        self._compute_kappas()
        return _best(self._parameter_condition_numbers, top_p, num_modules, threshold)


def find_kappa_target_modules(
    model: nn.Module,
    top_p: float = 0.2,
    max_dim_size_to_analyze: int = 16384,
    moe_param_suffixes: tuple[str, ...] | None = None,
    show_progress: bool = True,
) -> dict[str, list[str] | None]:
    """KappaTune in one call: `{"target_modules": [...], "target_parameters": [...] or None}` (None when
    the model has no fused MoE weights), the best-conditioned fraction `top_p` of each, ready for
    `LoraConfig(**find_kappa_target_modules(model))`."""
    selector = KappaTuneSelector(
        model,
        max_dim_size_to_analyze=max_dim_size_to_analyze,
        moe_param_suffixes=moe_param_suffixes,
        show_progress=show_progress,
    )
    parameters = selector.get_best_target_parameters(top_p=top_p)
    return {"target_modules": selector.get_best_targets(top_p=top_p), "target_parameters": parameters or None}
