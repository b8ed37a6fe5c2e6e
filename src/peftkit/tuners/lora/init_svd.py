"""Data-free LoRA initialisations computed from the base weight: PiSSA, OLoRA and "orthogonal".

With `W` the base weight (out, in) and `s` the LoRA scaling:

* PiSSA (Meng et al., 2024): `W = U S V^T`; the adapter takes the top-r singular triplets,
  `B = U_r S_r^{1/2} / sqrt(s)`, `A = S_r^{1/2} V_r^T / sqrt(s)`, and the base keeps the residual
  `W_res = W - s B A` (the other singular values). `pissa_niter_K` takes `U_r, S_r, V_r` from a randomized
  SVD with K subspace iterations (Halko et al., 2011) instead of a full one.
* OLoRA (Buyukakyuz, 2024): `W = Q R` (thin QR); `B = Q[:, :r]`, `A = R[:r]`, `W_res = W - s B A`.
* orthogonal: `B A = 0` with both factors non-zero, so training starts from the base model but both
  factors get gradients. `A = P A0`, `B = B0 (I - P)` with `P` the projector on a random r/2-dimensional
  subspace of the rank space and `A0, B0` entries i.i.d. N(0, 0.1^2); each projected factor has entries of
  standard deviation 0.1 / sqrt(2) and rank r/2, as in PEFT.

Each leaves the layer's output unchanged at initialisation: `W_res + s B A = W`. The factorisations run
in float32; the residual is written back in the base weight's dtype.
"""

from __future__ import annotations

import re
from typing import Any

import torch

_NITER = re.compile(r"pissa_niter_(\d+)")
RESIDUAL_INITS = ("pissa", "olora")  # inits that rewrite the base weight


def is_pissa(init: Any) -> bool:
    return isinstance(init, str) and (init == "pissa" or _NITER.fullmatch(init) is not None)


def _principal_factors(
    weight: torch.Tensor, r: int, init: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U_r (out, r), S_r (r,), V_r^T (r, in) of `weight`, by full or randomized SVD."""
    match = _NITER.fullmatch(init)
    if match is None:
        U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
        return U[:, :r], S[:r], Vh[:r]
    U, S, V = torch.svd_lowrank(weight, q=r, niter=int(match.group(1)))
    return U, S, V.T


def pissa_factors(
    weight: torch.Tensor, r: int, scaling: float, init: str = "pissa"
) -> tuple[torch.Tensor, ...]:
    """(A, B, residual) for PiSSA on an (out, in) float32 weight."""
    U, S, Vh = _principal_factors(weight, r, init)
    root = (S / scaling).sqrt()
    A = root[:, None] * Vh
    B = U * root[None, :]
    return A, B, weight - scaling * (B @ A)


def olora_factors(weight: torch.Tensor, r: int, scaling: float) -> tuple[torch.Tensor, ...]:
    """(A, B, residual) for OLoRA on an (out, in) float32 weight."""
    Q, R = torch.linalg.qr(weight)
    B, A = Q[:, :r].contiguous(), R[:r].contiguous()
    return A, B, weight - scaling * (B @ A)


def orthogonal_factors(
    in_features: int, out_features: int, r: int, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """(A, B) with `B @ A == 0`, each of rank r/2 (r must be even)."""
    if r % 2:
        raise ValueError(f"init_lora_weights='orthogonal' needs an even rank r, got r={r}; use an even r.")
    basis, _ = torch.linalg.qr(torch.randn(r, r, device=device))
    keep = basis[:, : r // 2]
    projector = keep @ keep.T  # onto a random r/2-dim subspace of the rank space
    A = projector @ (0.1 * torch.randn(r, in_features, device=device))
    B = (0.1 * torch.randn(out_features, r, device=device)) @ (torch.eye(r, device=device) - projector)
    return A, B


def init_from_weight(layer: Any, adapter_name: str, init: str) -> None:
    """Initialise adapter `adapter_name` of a LoRA `Linear` with PiSSA / OLoRA / orthogonal.

    PiSSA and OLoRA also replace the base weight by the residual (in place, keeping its dtype). When the
    factors live on the meta device (adapter created to be filled from a file), only the residual is
    computed: a saved PiSSA/OLoRA adapter holds trained factors, but the base still has to become the
    residual, exactly as at training time.
    """
    lora_A, lora_B = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
    r, scaling = layer.r[adapter_name], layer.scaling[adapter_name]
    base = layer.get_base_layer()
    weight = base.weight
    if init == "orthogonal":
        with torch.device(lora_A.device):
            A, B = orthogonal_factors(lora_A.shape[1], lora_B.shape[0], r, lora_A.device)
        _assign(lora_A, A)
        _assign(lora_B, B)
        return
    if not weight.dtype.is_floating_point or weight.is_meta:
        raise ValueError(
            f"init_lora_weights={init!r} needs the layer's full-precision weight, but it is "
            f"{'on the meta device' if weight.is_meta else weight.dtype}. Initialise the adapter on the unquantized "
            "model, save the residual model, and quantize that (the QPiSSA recipe)."
        )
    if r > min(weight.shape):
        raise ValueError(
            f"init_lora_weights={init!r} needs r <= min(out, in) = {min(weight.shape)}, got r={r}."
        )
    with torch.no_grad(), torch.device(weight.device):
        out_in = layer._weight_out_in(weight.detach()).float()
        if is_pissa(init):
            A, B, residual = pissa_factors(out_in, r, scaling, init)
        elif init == "olora":
            A, B, residual = olora_factors(out_in, r, scaling)
        else:
            raise ValueError(f"Unknown data-free initialisation {init!r}.")
        weight.data = layer._weight_out_in(residual).to(weight.dtype).contiguous()
    _assign(lora_A, A)
    _assign(lora_B, B)


def _assign(param: torch.Tensor, value: torch.Tensor) -> None:
    if param.is_meta:
        return
    with torch.no_grad():
        param.data = value.to(device=param.device, dtype=param.dtype).contiguous()
