"""MonteCLoRA (Monte Carlo LoRA, Sengupta et al., 2024; `monteclora_config`).

In training, LoRA's A (r, in) is replaced by a weighted mixture of `N = num_samples` noisy copies,

    A~^T = sum_n w_n (A^T + eps_n),    eps_n[i, :] ~ N(0, sample_scaler^2 * diag(v)),   w = softmax(z)

where the per-rank variances `v` come from a Wishart draw scaled by the learned `exp(std_prior)`
(`v_j = max(exp(2 s_j) * W_jj, 1e-3)`, `W ~ Wishart(r, I)`), and the mixture logits `z` from a Gaussian
(Laplace) approximation of a Dirichlet with learned concentration `exp(expert_weights_prior)`. Gradients
reach both learned vectors through the reparametrised draws. Evaluation and merging use the plain
factors (`delta W = s B A`).

`variational_loss()` gives the KL terms of the Dirichlet, Wishart and Gaussian posteriors against their
priors (weighted by `kl_loss_weight`) and, with `use_entropy`, the squared sum of the mixture weights;
`LoraModel._get_monteclora_loss()` averages them over the adapter's layers.

The raw noise is drawn `buffer_size` steps at a time, in PEFT's order (Gaussian noise, Dirichlet noise,
then one Wishart draw per step), but only when training first needs it: an adapter loaded for inference
allocates no noise (PEFT fills the buffer, `buffer_size * num_samples * in * r` numbers per layer, at
creation).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...utils.warnings import PeftWarning
from .layer import Linear
from .sub_configs import MontecloraConfig
from .variants import LoraVariant, add_adapter_container


def wishart_identity_draw(p: int, device: torch.device) -> torch.Tensor:
    """One draw of Wishart(df=p, scale=I_p) by Bartlett's decomposition `L L^T` (fp32), drawing as torch's
    `Wishart` does: chi-square diagonal (df p, p-1, ..., 1), then the strict lower triangle."""
    df = torch.arange(p, 0, -1, dtype=torch.float32, device=device)
    diagonal = torch.distributions.Chi2(df).rsample().sqrt().clamp(min=torch.finfo(torch.float32).eps)
    factor = torch.diag_embed(diagonal)
    rows, cols = torch.tril_indices(p, p, offset=-1, device=device)
    factor[rows, cols] = torch.randn(p * (p - 1) // 2, device=device)
    return factor @ factor.T


class MontecloraSampler(nn.Module):
    """The variational state of one adapter on one layer (PEFT's tensor names, which its files hold):
    parameters `std_prior` (r) and `expert_weights_prior` (N); buffers `gaussian_var_prior` (r, r) and
    `expert_weights` (N), the last draw's variances and mixture weights."""

    def __init__(
        self, in_features: int, rank: int, config: MontecloraConfig, dtype: torch.dtype | None = None
    ):
        super().__init__()
        self.in_features, self.rank, self.config = in_features, rank, config
        self.std_prior = nn.Parameter(torch.rand(rank, dtype=dtype))
        self.expert_weights_prior = nn.Parameter(torch.rand(config.num_samples, dtype=dtype))
        self.register_buffer("gaussian_var_prior", torch.eye(rank, dtype=dtype))
        self.register_buffer(
            "expert_weights", torch.ones(config.num_samples, dtype=dtype) / config.num_samples
        )
        self._noise: tuple[torch.Tensor, ...] | None = (
            None  # (gaussian, dirichlet, wishart) for buffer_size steps
        )
        self._next = 0
        # the last draw's variances and mixture weights with their autograd graph (for the loss terms)
        self._drawn: tuple[torch.Tensor, torch.Tensor] | None = None

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_drawn"] = None  # a tensor inside an autograd graph cannot be deep-copied
        return state

    def _refill(self) -> None:
        config, device, dtype = self.config, self.std_prior.device, self.std_prior.dtype
        steps, samples = config.buffer_size, config.num_samples
        with torch.no_grad():
            gaussian = torch.randn(steps, samples, self.in_features, self.rank, device=device, dtype=dtype)
            dirichlet = torch.randn(steps, samples, device=device, dtype=dtype)
            wishart = torch.stack([wishart_identity_draw(self.rank, device) for _ in range(steps)]).to(dtype)
        self._noise, self._next = (gaussian, dirichlet, wishart), 0

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(noise (N, in, r), mixture weights (N,)) for one training step."""
        if self._noise is None or self._next >= self.config.buffer_size:
            self._refill()
        gaussian, dirichlet, wishart = (t[self._next] for t in self._noise)
        self._next += 1
        std = torch.exp(self.std_prior)
        variances = ((std * wishart.diagonal()) * std).clamp(min=1e-3)
        noise = torch.nan_to_num(gaussian * variances.sqrt(), nan=1e-3) * self.config.sample_scaler
        weights = torch.softmax(self._mixture_logits(dirichlet), dim=-1)
        self._drawn = (torch.diag(variances), weights)
        with torch.no_grad():  # what PEFT saves: the last draw
            self.gaussian_var_prior.copy_(self._drawn[0])
            self.expert_weights.copy_(weights)
        return noise, weights

    def _mixture_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Laplace approximation of a Dirichlet(alpha) draw in log space: mean log(alpha) - mean, variances
        1/alpha (1 - 2/N) + sum(1/alpha) / N^2 (+ 1e-6), driven by the standard normal `z`."""
        n = self.config.num_samples
        alpha = torch.exp(self.expert_weights_prior).clamp(min=1e-6)
        mean = torch.log(alpha) - torch.log(alpha).mean()
        variance = (1 / alpha * (1 - 2 / n) + 1 / n**2 * (1 / alpha).sum()).clamp(min=1e-6)
        return (variance + 1e-6).sqrt() * z + mean

    def variational_loss(self) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """(kl_loss_weight * (Dirichlet KL + Wishart KL + Gaussian KL), entropy term); (0.0, 0.0) in eval."""
        if not self.training:
            return 0.0, 0.0
        n, r = self.config.num_samples, self.rank
        alpha = torch.exp(self.expert_weights_prior)
        prior = torch.full_like(alpha, self.config.dirichlet_prior)
        dirichlet = (
            torch.lgamma(alpha.sum())
            - torch.lgamma(prior.sum())
            + (torch.lgamma(alpha) - torch.lgamma(prior)).sum()
            + ((alpha - prior) * (torch.digamma(alpha) - torch.digamma(alpha.sum()))).sum()
        )
        std = torch.exp(self.std_prior)
        variance = std * std
        wishart = 0.5 * (-torch.log(variance).sum() * r + variance.sum() * r - r**2)
        drawn_var, drawn_weights = self._drawn or (self.gaussian_var_prior, self.expert_weights)
        drawn_var = drawn_var.diagonal().clamp(min=1e-6)
        gaussian = n * 0.5 * (drawn_var.sum() - torch.log(drawn_var).sum() - r)
        entropy = drawn_weights.pow(2).sum() if self.config.use_entropy else 0
        return self.config.kl_loss_weight * (dirichlet + wishart + gaussian), entropy


class MontecloraVariant(LoraVariant):
    """MonteCLoRA on a Linear layer (plain, transformers' Conv1D or quantized)."""

    name = "MonteCLoRA"
    config_field = "monteclora_config"

    def __init__(self, config: MontecloraConfig) -> None:
        self.config = config

    def init(self, layer: Any, adapter_name: str, inference_mode: bool = False) -> None:
        if not isinstance(layer, Linear) or type(layer).__name__ == "ParamWrapper":
            raise ValueError(
                "MonteCLoRA (monteclora_config) applies to linear layers only, not to "
                f"{type(layer.get_base_layer()).__name__}; leave such layers out of target_modules."
            )
        A = layer.lora_A[adapter_name].weight
        samplers = add_adapter_container(layer, "lora_monteclora_sampler", nn.ModuleDict)
        with torch.device(A.device):  # meta under low_cpu_mem_usage: the values come from the file
            samplers[adapter_name] = MontecloraSampler(layer.in_features, A.shape[0], self.config, A.dtype)
        layer._finish_new_adapter(adapter_name, inference_mode)

    def forward(
        self, layer: Any, adapter_name: str, x: torch.Tensor, result: torch.Tensor, base_result: torch.Tensor
    ) -> torch.Tensor:
        lora_A, lora_B = layer.lora_A[adapter_name], layer.lora_B[adapter_name]
        x = layer.lora_dropout[adapter_name](x.to(lora_A.weight.dtype))
        weight_A = lora_A.weight
        if layer.training:
            noise, weights = layer.lora_monteclora_sampler[adapter_name].draw()
            if torch.isnan(noise).any() or torch.isnan(weights).any():
                warnings.warn("Monteclora sampling produced NaNs, using base weights.", PeftWarning)
            else:
                weight_A = torch.einsum("n,nij->ij", weights, weight_A.T + noise).T
        output = lora_B(F.linear(x, weight_A)) * layer.scaling[adapter_name]
        return layer._add_adapter_output(result, output)
