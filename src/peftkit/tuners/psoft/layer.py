"""PSOFT layers: an r x r transformation R inside the weight's principal subspace.

    A = V_r^T (r x in),  B = U_r diag(S_r) / scaling (out x r)      from W0 = U S V^T ("psoft_init"), or
    A = diag(sqrt(S_r / scaling)) V_r^T,  B = U_r diag(sqrt(S_r / scaling))   ("pissa_init")
    delta_W = scaling * B (R - I) A,   scaling = psoft_alpha / r
    y = W0 x + b + scaling * ((R(A d(x)) - A d(x)) B^T)             (d: dropout; R(h) = h R^T)

A and B are frozen buffers that are not saved: they are rebuilt from the base weight's SVD when the adapter
is created or loaded (the "lowrank" SVD from `random_seed`, so that rebuilding gives the same factors).
Only R (`psoft_R`, see `orth.py`) trains. On a quantized base (bitsandbytes) the SVD is that of the
dequantized weight, and "the base weight's dtype" below is the dtype it dequantizes to.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._buffer_dict import BufferDict
from .._dropout import input_dropout
from .._quantized import weight_dtype, weight_shape
from ..tuners_utils import BaseTunerLayer
from .config import PsoftConfig
from .orth import OrthLayer

__all__ = ["Linear", "OrthLayer", "PsoftLayer", "principal_factors"]

_HALF = (torch.float16, torch.bfloat16)


def _svd_top(weight: torch.Tensor, r: int, mode: str, niter: int, seed: int):
    """(U_r, S_r, V_r^T) of the fp32 (out, in) `weight`: exact, or torch.svd_lowrank with its random
    projection drawn from `seed` (in a forked RNG: the global one is left as it was)."""
    if mode == "full":
        U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
        return U[:, :r], S[:r], Vh[:r, :]
    fork = (
        {"devices": []}
        if weight.device.type == "cpu"
        else {"devices": [weight.device], "device_type": weight.device.type}
    )
    with torch.random.fork_rng(**fork):
        torch.manual_seed(seed)
        U, S, V = torch.svd_lowrank(weight, q=r, niter=niter)
    return U[:, :r], S[:r], V[:, :r].T


def principal_factors(
    weight: torch.Tensor,
    r: int,
    scaling: float,
    init: str,
    mode: str = "full",
    niter: int = 10,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PSOFT's frozen A (r x in) and B (out x r) of an (out, in) weight, in fp32."""
    with torch.no_grad():
        U_r, S_r, Vh_r = _svd_top(weight.float(), r, mode, niter, seed)
        scaled = S_r / scaling
        if init == "psoft_init":
            A, B = Vh_r, U_r @ torch.diag(scaled)
        else:  # "pissa_init"
            root = torch.diag(torch.sqrt(scaled))
            A, B = root @ Vh_r, U_r @ root
        return A.contiguous(), B.contiguous()


class PsoftLayer(BaseTunerLayer):
    """State of PSOFT layers: R per adapter, its settings, and the rebuilt A and B."""

    adapter_layer_names = ("psoft_R",)
    other_param_names = (
        "r",
        "psoft_alpha",
        "scaling",
        "psoft_dropout",
        "psoft_svd",
        "psoft_svd_lowrank_niter",
        "random_seed",
        "ab_svd_init",
        "_psoft_A_cache",
        "_psoft_B_cache",
    )

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self._init_tuner_layer(base_layer)
        self.r: dict[str, int] = {}
        self.psoft_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.psoft_dropout = nn.ModuleDict({})
        self.psoft_svd: dict[str, str] = {}
        self.psoft_svd_lowrank_niter: dict[str, int] = {}
        self.random_seed: dict[str, int] = {}
        self.ab_svd_init: dict[str, str] = {}
        self.psoft_R = nn.ModuleDict({})
        self._psoft_A_cache = BufferDict(persistent=False)
        self._psoft_B_cache = BufferDict(persistent=False)
        self.kwargs = kwargs

    def update_layer(
        self, adapter_name: str, config: PsoftConfig, inference_mode: bool = False, **kwargs: Any
    ) -> None:
        """Create adapter `adapter_name`: R (the identity with `init_weights`) and A, B from the base weight."""
        r = config.r
        if r > min(self.in_features, self.out_features):
            raise ValueError(
                f"`r` ({r}) must be less than or equal to min(in_features, out_features) "
                f"({self.in_features}, {self.out_features}); lower r for this layer or leave it out of target_modules."
            )
        base = self.get_base_layer()
        if weight_dtype(base) not in (torch.float32, *_HALF):
            raise TypeError(
                f"PSOFT builds A and B from the SVD of a float32/float16/bfloat16 weight, got {weight_dtype(base)}: "
                "create the adapter on a floating-point model (or one quantized by bitsandbytes)."
            )
        self.r[adapter_name] = r
        self.psoft_alpha[adapter_name] = config.psoft_alpha
        self.scaling[adapter_name] = config.psoft_alpha / r
        self.psoft_dropout[adapter_name] = input_dropout(config.psoft_dropout)
        self.psoft_svd[adapter_name] = config.psoft_svd
        self.psoft_svd_lowrank_niter[adapter_name] = config.psoft_svd_lowrank_niter
        self.random_seed[adapter_name] = config.random_seed
        self.ab_svd_init[adapter_name] = config.ab_svd_init
        self.psoft_R[adapter_name] = OrthLayer(
            size=r,
            orth=config.psoft_orth,
            mag_b=config.psoft_mag_b,
            mag_a=config.psoft_mag_a,
            use_cayley_neumann=config.use_cayley_neumann,
            num_cayley_neumann_terms=config.num_cayley_neumann_terms,
            cayley_neumann_eps=config.cayley_neumann_eps,
        )
        self._finish_new_adapter(adapter_name, inference_mode)
        self.psoft_R[adapter_name].reset_parameters(init_weights=config.init_weights)
        weight = self._dense_base_weight()
        oriented = weight.T if self.fan_in_fan_out else weight
        A, B = principal_factors(
            oriented,
            r,
            self.scaling[adapter_name],
            config.ab_svd_init,
            config.psoft_svd,
            config.psoft_svd_lowrank_niter,
            config.random_seed,
        )
        self._psoft_A_cache[adapter_name] = A
        self._psoft_B_cache[adapter_name] = B

    def __repr__(self) -> str:
        return "psoft." + super().__repr__()


class Linear(PsoftLayer, nn.Module):
    """PSOFT on `nn.Linear`."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: PsoftConfig, **kwargs: Any) -> None:
        nn.Module.__init__(self)
        PsoftLayer.__init__(self, base_layer, **kwargs)
        self.fan_in_fan_out = config.fan_in_fan_out
        shape = weight_shape(self.get_base_layer())
        self.out_features, self.in_features = shape[::-1] if self.fan_in_fan_out else shape
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """`scaling * B (R - I) A` in the base weight's layout and dtype (computed in fp32 for half
        precision on the CPU)."""
        base = self.get_base_layer()
        device, dtype = base.weight.device, weight_dtype(base)
        compute = torch.float32 if device.type == "cpu" and dtype in _HALF else dtype
        A = self._psoft_A_cache[adapter_name].to(device, compute)
        B = self._psoft_B_cache[adapter_name].to(device, compute)
        R = self.psoft_R[adapter_name].get_matrix().to(device, compute)
        eye = torch.eye(self.r[adapter_name], device=device, dtype=compute)
        delta = B @ (R - eye) @ A
        delta = delta.T if self.fan_in_fan_out else delta
        return (delta * self.scaling[adapter_name]).to(dtype)

    def _adapter_output(self, adapter_name: str, x: torch.Tensor, base_result: torch.Tensor) -> torch.Tensor:
        A, B = self._psoft_A_cache[adapter_name], self._psoft_B_cache[adapter_name]
        x = self.psoft_dropout[adapter_name](self._cast_input_dtype(x, A.dtype))
        projected = x @ A.to(x.device, x.dtype).T
        rotated = self.psoft_R[adapter_name](projected)
        return (rotated - projected) @ B.to(x.device, x.dtype).T * self.scaling[adapter_name]
