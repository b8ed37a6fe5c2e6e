"""AdaMSS layers: low-rank updates in K subspaces clustered from the weight's singular vectors.

With `x_aug = [x, 1]` (just `x` when the layer has no bias), V^T (R, in + 1) from the SVD of `[W | b]`,
and the output rows split into groups G_1..G_K (see decomposition.py):

    y = base(x) + scatter_k( B_k A_k V^T x_aug )     (rows G_k of the update come from subspace k)
    delta [W | b] rows G_k = B_k A_k V^T              (the last column is the bias change)

computed as `B A V^T x_aug` with A the A_k stacked and B the B_k block-diagonal, rows in output order.

A_k (r_k, R) and B_k (|G_k|, r_k) train (B_k = 0 at the start: a no-op); V^T is frozen and saved; the
groups are not saved but recomputed from the base weight when the adapter is built, exactly as PEFT's
(the clustering reproduces scikit-learn's). On a quantized base (bitsandbytes) the SVD and the groups are
those of the dequantized weight, and the adapter computes in the dtype it dequantizes to. Adaptive subspace allocation (ASA) scores each subspace by
EMAs of |w * grad| and their uncertainty and freezes the least important ones (see model.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._buffer_dict import BufferDict
from .._quantized import weight_dtype
from ..tuners_utils import BaseTunerLayer
from .config import AdamssConfig
from .decomposition import (
    augmented_weight,
    row_clusters,
    seeded_svd,
    subspace_projection,
    subspace_rank,
)

_HALF_DTYPES = (torch.float16, torch.bfloat16)


class AdamssLayer(BaseTunerLayer):
    """State shared by AdaMSS layers: per adapter the subspaces' A_k/B_k, V^T, the row groups and the ASA scores."""

    adapter_layer_names = ("adamss_A", "adamss_B")
    other_param_names = (
        "num_subspaces",
        "train_subspace_index",
        "seg_result",
        "scatter_index",
        "exp_avg_ipt_A",
        "exp_avg_ipt_B",
        "exp_avg_unc_A",
        "exp_avg_unc_B",
        "adamss_newB",
    )

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.adamss_A = nn.ModuleDict({})  # adapter -> ParameterList of A_k (keys adamss_A.<adapter>.<k>)
        self.adamss_B = nn.ModuleDict({})
        self.adamss_newB = BufferDict(persistent=True)  # adapter -> V^T, saved with the adapter
        self.num_subspaces: dict[str, int] = {}
        self.train_subspace_index: dict[str, list[int]] = {}
        self.seg_result: dict[str, dict[int, torch.Tensor]] = {}
        self.scatter_index: dict[str, torch.Tensor] = {}
        self.exp_avg_ipt_A: dict[str, list[torch.Tensor | None]] = {}
        self.exp_avg_ipt_B: dict[str, list[torch.Tensor | None]] = {}
        self.exp_avg_unc_A: dict[str, list[torch.Tensor | None]] = {}
        self.exp_avg_unc_B: dict[str, list[torch.Tensor | None]] = {}
        self.kwargs = kwargs

    def update_layer(
        self, adapter_name: str, r: int, config: AdamssConfig, inference_mode: bool = False, **kwargs: Any
    ) -> None:
        """Create adapter `adapter_name`: SVD of the base weight, subspaces, their A_k and B_k."""
        base = self.get_base_layer()
        weight = base.weight
        if weight.is_meta:
            raise ValueError(
                "AdaMSS builds its subspaces from the base weight, which is on the meta device here; load the base "
                "model's weights before adding an AdaMSS adapter."
            )
        # computed for real even under low_cpu_mem_usage (the groups are needed, and are not in the file)
        with torch.device(weight.device):
            self._build_subspaces(adapter_name, r, config, weight_dtype(base))
        self._finish_new_adapter(adapter_name, inference_mode)

    def _build_subspaces(self, adapter_name: str, r: int, config: AdamssConfig, dtype: torch.dtype) -> None:
        matrix = augmented_weight(self._dense_base_weight(), self.get_base_layer().bias)
        left, right_t = seeded_svd(matrix, r, config.random_seed)
        groups = row_clusters(left, config.num_subspaces)
        count = len(groups)
        factors_a, factors_b = [], []
        for rows in groups:
            block = left[rows, :r]
            rank = subspace_rank(block, config.subspace_rank, config.use_dynamic_rank, config.svd_threshold)
            factor_a = subspace_projection(block, rank)
            if config.init_weights == "orthogonal":  # B = 0: the adapter starts as a no-op
                factor_b = torch.zeros(rows.numel(), rank, dtype=dtype)
            else:  # small random B (for tests): the adapter changes the output from the start
                factor_b = torch.randn(rows.numel(), rank, dtype=dtype) * 0.01
            factors_a.append(nn.Parameter(factor_a.to(dtype)))
            factors_b.append(nn.Parameter(factor_b.to(dtype)))
        self.num_subspaces[adapter_name] = count
        self.train_subspace_index[adapter_name] = list(range(count))
        self.seg_result[adapter_name] = dict(enumerate(groups))
        self.scatter_index[adapter_name] = torch.cat(groups).long()
        self.adamss_newB[adapter_name] = right_t.detach().to(dtype)
        self.adamss_A[adapter_name] = nn.ParameterList(factors_a)
        self.adamss_B[adapter_name] = nn.ParameterList(factors_b)
        if config.use_asa:
            for scores in (self.exp_avg_ipt_A, self.exp_avg_ipt_B, self.exp_avg_unc_A, self.exp_avg_unc_B):
                scores[adapter_name] = [None] * count

    def cast_adapter_dtype(self, adapter_name: str, dtype: torch.dtype = torch.float32) -> None:
        """A_k, B_k and V^T in fp16/bf16 become `dtype` (V^T too, as PEFT casts it)."""
        super().cast_adapter_dtype(adapter_name, dtype)
        if adapter_name in self.adamss_newB and self.adamss_newB[adapter_name].dtype in _HALF_DTYPES:
            self.adamss_newB[adapter_name] = self.adamss_newB[adapter_name].to(dtype)

    # ----- adaptive subspace allocation -----
    def update_importance(
        self, adapter_name: str, importance_beta: float = 0.85, uncertainty_beta: float = 0.85
    ) -> None:
        """Fold the current gradients into the EMAs of importance |w * grad| and of its uncertainty
        |importance - EMA| (uncertainty first, from the previous importance EMA)."""
        if adapter_name not in self.exp_avg_ipt_A or adapter_name not in self.adamss_A:
            return
        sides = (
            (self.adamss_A[adapter_name], self.exp_avg_ipt_A[adapter_name], self.exp_avg_unc_A[adapter_name]),
            (self.adamss_B[adapter_name], self.exp_avg_ipt_B[adapter_name], self.exp_avg_unc_B[adapter_name]),
        )
        for k in range(self.num_subspaces[adapter_name]):
            for params, importance, uncertainty in sides:
                param = params[k]
                if param.grad is None:
                    continue
                if importance[k] is None:
                    importance[k] = torch.zeros_like(param, requires_grad=False)
                    uncertainty[k] = torch.zeros_like(param, requires_grad=False)
                current = (param * param.grad).abs().detach()
                uncertainty[k].mul_(uncertainty_beta).add_(
                    (current - importance[k]).abs(), alpha=1 - uncertainty_beta
                )
                importance[k].mul_(importance_beta).add_(current, alpha=1 - importance_beta)

    def reset_importance(self, adapter_name: str) -> None:
        """Start the next scoring window afresh (called after each masking)."""
        if adapter_name in self.exp_avg_ipt_A:
            count = len(self.exp_avg_ipt_A[adapter_name])
            for scores in (self.exp_avg_ipt_A, self.exp_avg_ipt_B, self.exp_avg_unc_A, self.exp_avg_unc_B):
                scores[adapter_name] = [None] * count

    def subspace_scores(self, adapter_name: str) -> list[tuple[int, torch.Tensor]]:
        """(k, score) of the subspaces with scores: mean(importance * uncertainty) of A_k plus that of B_k."""
        ipt_a, ipt_b = self.exp_avg_ipt_A[adapter_name], self.exp_avg_ipt_B[adapter_name]
        unc_a, unc_b = self.exp_avg_unc_A[adapter_name], self.exp_avg_unc_B[adapter_name]
        return [
            (k, (ipt_a[k] * unc_a[k]).mean() + (ipt_b[k] * unc_b[k]).mean())
            for k in range(self.num_subspaces.get(adapter_name, 0))
            if ipt_a[k] is not None and ipt_b[k] is not None
        ]

    def set_subspace_trainable(self, adapter_name: str, k: int, trainable: bool) -> None:
        """Let subspace k of `adapter_name` train or freeze it (dropping its gradients)."""
        for params in (self.adamss_A[adapter_name], self.adamss_B[adapter_name]):
            if k < len(params):
                params[k].requires_grad = trainable
                if not trainable:
                    params[k].grad = None

    def __repr__(self) -> str:
        return "adamss." + super().__repr__()


class Linear(AdamssLayer, nn.Module):
    """AdaMSS on `nn.Linear`."""

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, r: int, config: AdamssConfig, **kwargs: Any
    ) -> None:
        nn.Module.__init__(self)
        AdamssLayer.__init__(self, base_layer, **kwargs)
        base = self.get_base_layer()
        self.in_features, self.out_features = base.in_features, base.out_features
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, config)
        self.dtype = weight_dtype(base)  # the adapter computes in the base layer's dtype, as PEFT's

    def _augmented_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        if self.get_base_layer().bias is None:
            return x
        return torch.cat((x, x.new_ones(*x.shape[:-1], 1)), dim=-1)

    def _stacked_factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (sum r_k, R), B (out, sum r_k)): the A_k stacked, and the B_k as one block-diagonal matrix with
        its rows in output order, so that B A = the subspaces' updates, scattered. Two matrix products then
        replace K pairs of small ones and the scatter of the (large) activations."""
        stacked_a = torch.cat(list(self.adamss_A[adapter_name]), dim=0)
        blocks_b = torch.block_diag(*self.adamss_B[adapter_name])
        order = torch.argsort(self.scatter_index[adapter_name].to(blocks_b.device))
        return stacked_a, blocks_b.index_select(0, order)

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        stacked_a, blocks_b = self._stacked_factors(adapter_name)
        projected = F.linear(self._augmented_input(x), self.adamss_newB[adapter_name].to(self.dtype))
        return F.linear(F.linear(projected, stacked_a.to(self.dtype)), blocks_b.to(self.dtype))

    def _augmented_delta(self, adapter_name: str) -> torch.Tensor:
        """delta [W | b] (out, in + 1; no bias column without a bias), in float32."""
        stacked_a, blocks_b = self._stacked_factors(adapter_name)
        return blocks_b.float() @ stacked_a.float() @ self.adamss_newB[adapter_name].float()

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        delta = self._augmented_delta(adapter_name)
        return delta[:, :-1] if self.get_base_layer().bias is not None else delta

    def _bias_delta(self, adapter_name: str) -> torch.Tensor | None:
        if self.get_base_layer().bias is None:
            return None
        return self._augmented_delta(adapter_name)[:, -1]
