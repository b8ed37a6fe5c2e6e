"""RandLoRA layers: a full-rank update from frozen random bases scaled by trained diagonal matrices.

    y = W x + s * U_big U_small dropout(x)          (in <= out; the other way round below)
    U_small = flatten_{(k, n)}(lambda[k, n] * A[k, 0, :d] * gamma[n, :d])      (r n x d)
    U_big   = flatten_{(n, k)}(B[:D, n, k])                                   (D x n r)
    delta_W = s * U_big U_small

`A` (r, 1, d_max) and `B` (D_max, n_max, r) are the adapter's shared bases (`RandLoraModel.randlora_A/
randlora_B`, referenced by every layer), sliced to this layer's d = min(in, out), D = max(in, out) and
n = ceil(d / r) bases; only `lambda` (r x n) and `gamma` (n x d) train, and s = randlora_alpha / r.
U_small acts on the smaller side: for in <= out, x -> U_small x -> U_big (.), else x -> U_big^T x ->
U_small^T (.). (U_small's rows run over (k, n), U_big's columns over (n, k): the pairing of the bases
is peft's.)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._buffer_dict import BufferDict
from .._dropout import input_dropout
from .._linear_kind import set_linear_sizes
from ..tuners_utils import BaseTunerLayer
from .bases import num_bases
from .config import RandLoraConfig

_HALF = (torch.float16, torch.bfloat16)


class ScaledBasis(torch.autograd.Function):
    """`lambda[:, :, None] * A * gamma[None]` (r, n, d), saving only its three inputs for the backward (the
    product, one d-vector per basis and rank, would otherwise be kept per layer)."""

    @staticmethod
    def forward(ctx: Any, basis: torch.Tensor, lam: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(basis, lam, gamma)
        return lam[:, :, None] * basis * gamma[None]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, torch.Tensor]:
        basis, lam, gamma = (t.to(grad.dtype) for t in ctx.saved_tensors)
        grad_lam = torch.einsum("knd,kod,nd->kn", grad, basis, gamma)
        grad_gamma = torch.einsum("knd,kod,kn->nd", grad, basis, lam)
        return None, grad_lam, grad_gamma


class RandLoraLayer(BaseTunerLayer):
    """State shared by RandLoRA layer kinds: the trained diagonals and references to the shared bases."""

    adapter_layer_names = ("randlora_lambda", "randlora_gamma")
    other_param_names = ("randlora_A", "randlora_B", "randlora_dropout", "r", "scaling")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.randlora_dropout = nn.ModuleDict({})
        self.randlora_lambda = nn.ParameterDict({})
        self.randlora_gamma = nn.ParameterDict({})
        self.randlora_A: BufferDict | None = None  # the tuner's dicts, set by update_layer
        self.randlora_B: BufferDict | None = None
        self.kwargs = kwargs

    def update_layer(
        self,
        adapter_name: str,
        randlora_A: BufferDict,
        randlora_B: BufferDict,
        r: int,
        config: RandLoraConfig,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create adapter `adapter_name` on this layer, reading its bases from the shared dicts."""
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        small, big = sorted((self.in_features, self.out_features))
        count = num_bases(small, r)
        self._check_bases(
            randlora_A[adapter_name], randlora_B[adapter_name], adapter_name, r, count, small, big
        )
        self.r[adapter_name] = r
        self.scaling[adapter_name] = config.randlora_alpha / r
        self.randlora_dropout[adapter_name] = input_dropout(config.randlora_dropout)
        # lambda is drawn even when it is then zeroed: seeded runs take peft's path through the generator
        self.randlora_lambda[adapter_name] = nn.Parameter(torch.randn(r, count))
        self.randlora_gamma[adapter_name] = nn.Parameter(torch.ones(count, small) / big)
        self.randlora_A, self.randlora_B = randlora_A, randlora_B
        if config.init_weights:
            self.reset_randlora_parameters(adapter_name)
        self._finish_new_adapter(adapter_name, inference_mode)

    def _check_bases(
        self,
        basis_a: torch.Tensor,
        basis_b: torch.Tensor,
        adapter: str,
        r: int,
        count: int,
        small: int,
        big: int,
    ) -> None:
        """The shared bases of `adapter` must cover this layer: rank r, `count` bases, both sides."""
        fits = basis_a.shape[0] == basis_b.shape[2] == r and basis_a.shape[2] >= small
        if not fits or basis_b.shape[0] < big or basis_b.shape[1] < count:
            raise ValueError(
                f"The shared RandLoRA bases of adapter '{adapter}' do not fit this layer: randlora_A is "
                f"{tuple(basis_a.shape)} and randlora_B {tuple(basis_b.shape)}, the layer ({self.in_features} -> "
                f"{self.out_features}, r={r}) needs at least ({r}, 1, {small}) and ({big}, {count}, {r})."
            )

    def reset_randlora_parameters(self, adapter_name: str) -> None:
        """`lambda = 0` (the adapter starts as a no-op) and `gamma = 1 / max(n, d)`."""
        if adapter_name in self.randlora_lambda:
            with torch.no_grad():
                nn.init.zeros_(self.randlora_lambda[adapter_name])
                gamma = self.randlora_gamma[adapter_name]
                nn.init.constant_(gamma, 1 / max(gamma.shape))

    def _factors(self, adapter: str, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(first, second): the adapter output is `s * second @ first @ x` (module docstring); fp32 on CPU
        for half-precision bases."""
        basis_a, basis_b = self.randlora_A[adapter], self.randlora_B[adapter]
        device = basis_b.device if device is None else device
        lam = self.randlora_lambda[adapter].to(device)
        gamma = self.randlora_gamma[adapter].to(device)
        if device.type == "cpu" and basis_b.dtype in _HALF:
            basis_a, basis_b, lam, gamma = basis_a.float(), basis_b.float(), lam.float(), gamma.float()
        small, big = sorted((self.in_features, self.out_features))
        count = lam.shape[1]
        big_side = basis_b[:big, :count, :].to(device).flatten(start_dim=1)
        small_side = ScaledBasis.apply(basis_a[:, :count, :small].to(device), lam, gamma).flatten(end_dim=1)
        if small == self.in_features:
            return small_side, big_side
        return big_side.T, small_side.T

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """`s * second @ first` in the base weight's layout."""
        first, second = self._factors(adapter)
        delta = second @ first
        return (delta.T if self.fan_in_fan_out else delta) * self.scaling[adapter]

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        first, second = self._factors(adapter_name, device=x.device)
        x = self._cast_input_dtype(x, second.dtype)
        hidden = F.linear(self.randlora_dropout[adapter_name](x), first)
        return F.linear(hidden, second) * self.scaling[adapter_name]

    def __repr__(self) -> str:
        return "randlora." + super().__repr__()


class Linear(RandLoraLayer, nn.Module):
    """RandLoRA on `nn.Linear` or transformers' `Conv1D` (`fan_in_fan_out=True`: weight stored as (in, out))."""

    def __init__(
        self,
        base_layer: nn.Module,
        randlora_A: BufferDict,
        randlora_B: BufferDict,
        adapter_name: str,
        config: RandLoraConfig,
        r: int = 0,
        fan_in_fan_out: bool = False,
        is_target_conv_1d_layer: bool = False,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        RandLoraLayer.__init__(self, base_layer, **kwargs)
        set_linear_sizes(self, fan_in_fan_out, is_target_conv_1d_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, randlora_A, randlora_B, r, config)
