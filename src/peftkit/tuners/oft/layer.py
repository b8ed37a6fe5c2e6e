"""OFT layers: a block-diagonal orthogonal matrix `R = diag(R_1 .. R_r)` rotates the layer's input.

Each block comes from the upper triangle `q` (b(b-1)/2 numbers) of a skew-symmetric `Q = U - U^T`:

    exact Cayley:          R_i = (I - Q)(I + Q)^-1
    use_cayley_neumann:    R_i = (I + Q)(I + Q + ... + Q^(m-1)),  m = max(3, T - 1)  (T = num terms)
                           (T = 2: I + 2Q; T = 1: I) -- the truncation peft 0.21 uses

(the two forms are transposes of each other to first order; both are what peft computes). With `coft`,
each block's `Q` is first projected (in place) into the Frobenius ball of radius `eps / sqrt(n_blocks)`.

    Linear:     y = W (x R) + b                  merge: W <- W R^T
    Embedding:  y = E[x] R                       merge: E <- E R
    Conv2d:     y = conv(T_R(x))                 merge: W_flat <- W_flat R^T  (W_flat: (out, C*k*k))

For kernels > 1, peft 0.21's unmerged Conv2d forward `T_R` unfolds the input into k x k patches (stride 1,
no padding), rotates each patch, and folds the patches back by summation (with its channel/patch axes
laid out as `(C, L, k*k)`); that is not the merged convolution, so merged and unmerged outputs differ.
peftkit computes the same numbers as peft in both modes. For 1 x 1 kernels both are the same map.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...utils.warnings import PeftWarning
from .._linalg import solve
from ..tuners_utils import BaseTunerLayer


def nearest_divisor(n: int, target: int) -> int:
    """The divisor of `n` closest to `target` (the smaller one on a tie)."""
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - target), d))


def skew_symmetric(vec: torch.Tensor, block_size: int) -> torch.Tensor:
    """`(n, b, b)` skew-symmetric blocks whose strict upper triangles (row-major) are the rows of `vec`."""
    rows, cols = torch.triu_indices(block_size, block_size, 1, device=vec.device)
    upper = vec.new_zeros(vec.shape[0], block_size, block_size)
    upper[:, rows, cols] = vec
    return upper - upper.transpose(1, 2)


def cayley(q: torch.Tensor, use_neumann: bool, num_terms: int) -> torch.Tensor:
    """The rotation blocks of skew-symmetric `q` (module docstring)."""
    eye = torch.eye(q.shape[-1], device=q.device, dtype=q.dtype).expand_as(q)
    if not use_neumann:
        return solve(eye + q, eye - q)
    if num_terms == 1:
        return eye.clone()
    if num_terms == 2:
        return eye + 2 * q
    series, power = eye.clone(), eye
    for _ in range(max(3, num_terms - 1) - 1):
        power = power @ q
        series = series + power
    return (eye + q) @ series


class OFTRotationModule(nn.Module):
    """One adapter's rotation: `weight` holds the upper triangles of its skew-symmetric blocks."""

    def __init__(
        self,
        r: int,
        block_size: int,
        block_share: bool = False,
        coft: bool = False,
        eps: float = 6e-5,
        use_cayley_neumann: bool = True,
        num_cayley_neumann_terms: int = 5,
    ) -> None:
        super().__init__()
        self.r, self.block_size, self.block_share = r, block_size, block_share
        self.coft, self.eps = coft, eps
        self.use_cayley_neumann, self.num_cayley_neumann_terms = use_cayley_neumann, num_cayley_neumann_terms
        n_elements = block_size * (block_size - 1) // 2
        self.weight = nn.Parameter(torch.empty(1 if block_share else r, n_elements))

    def _project_coft(self) -> None:
        """COFT: scale each block's Q back onto the ball ||Q||_F <= eps / sqrt(n_blocks) (in place)."""
        with torch.no_grad():
            radius = self.eps / math.sqrt(self.weight.shape[0])
            norms = self.weight.norm(dim=1, keepdim=True) * math.sqrt(2)  # ||Q||_F = sqrt(2) ||upper||
            self.weight.mul_(torch.where(norms > radius, radius / norms, torch.ones_like(norms)))

    def blocks(self) -> torch.Tensor:
        """The `(r, b, b)` rotation blocks."""
        if self.coft:
            self._project_coft()
        q = skew_symmetric(self.weight, self.block_size)
        rotation = cayley(q, self.use_cayley_neumann, self.num_cayley_neumann_terms)
        return rotation.expand(self.r, -1, -1) if self.block_share else rotation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x R` on the last axis (of size r * b), computed in the rotation's dtype, returned in x's."""
        blocks = self.blocks()
        rotated = torch.einsum("...rb,rbc->...rc", x.to(blocks.dtype).unflatten(-1, (self.r, -1)), blocks)
        return rotated.flatten(-2).to(x.dtype)


class OFTLayer(BaseTunerLayer, nn.Module):
    """State shared by OFT layer kinds: one `OFTRotationModule` per adapter (in `oft_R`, or
    `oft_embedding_R` for embeddings). A kind sets `rotation_dim` and how the rotation meets the layer."""

    adapter_layer_names = ("oft_R", "oft_embedding_R")
    other_param_names = ("r", "oft_block_size", "oft_dropout")
    _rotations_attr = "oft_R"

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        nn.Module.__init__(self)
        self._init_tuner_layer(base_layer)
        self.oft_R = nn.ModuleDict({})
        self.oft_embedding_R = nn.ModuleDict({})
        self.r: dict[str, int] = {}
        self.oft_block_size: dict[str, int] = {}
        self.oft_dropout: dict[str, float] = {}  # accepted, not applied (as in peft 0.21)
        self.fan_in_fan_out = kwargs.pop("fan_in_fan_out", False)
        self._check_base()
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, **kwargs)

    def _check_base(self) -> None:
        """Raise when the base layer is a variant this kind cannot rotate."""

    @property
    def rotation_dim(self) -> int:
        raise NotImplementedError

    def update_layer(
        self,
        adapter_name: str,
        r: int = 0,
        oft_block_size: int = 32,
        module_dropout: float = 0.0,
        coft: bool = False,
        eps: float = 6e-5,
        block_share: bool = False,
        use_cayley_neumann: bool = True,
        num_cayley_neumann_terms: int = 5,
        init_weights: bool = True,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create adapter `adapter_name`: `r` blocks of size `oft_block_size` (one of them given; the other
        follows from `r * oft_block_size == rotation_dim`, the given one moved to the nearest divisor)."""
        n = self.rotation_dim
        if r:
            r = nearest_divisor(n, r)
            oft_block_size = n // r
        else:
            adjusted = nearest_divisor(n, oft_block_size)
            if adjusted != oft_block_size:
                warnings.warn(
                    f"Invalid `oft_block_size` ({oft_block_size})! Adjusted `oft_block_size` to ({adjusted}).",
                    PeftWarning,
                )
            oft_block_size, r = adjusted, n // adjusted
        self.r[adapter_name] = r
        self.oft_block_size[adapter_name] = oft_block_size
        self.oft_dropout[adapter_name] = module_dropout
        rotation = OFTRotationModule(
            r, oft_block_size, block_share, coft, eps, use_cayley_neumann, num_cayley_neumann_terms
        )
        if init_weights:
            nn.init.zeros_(rotation.weight)
        else:
            nn.init.normal_(rotation.weight, mean=0.0, std=0.1)
        getattr(self, self._rotations_attr)[adapter_name] = rotation
        self._finish_new_adapter(adapter_name, inference_mode)

    def has_adapter(self, adapter_name: str) -> bool:
        return adapter_name in getattr(self, self._rotations_attr)

    def _rotation(self, adapter_name: str) -> OFTRotationModule:
        return getattr(self, self._rotations_attr)[adapter_name]

    # ----- merging: rotate the flattened weight on its input side -----
    def _rotate_weight(self, adapter_name: str, weight: torch.Tensor, inverse: bool) -> torch.Tensor:
        """`W_flat R^T` (or `W_flat R^-T` with `inverse`), W flattened to (out, rotation_dim), in fp32."""
        blocks = self._rotation(adapter_name).blocks().float()
        if inverse:
            blocks = torch.linalg.inv(blocks)
        flat = weight.float().reshape(weight.shape[0], -1).unflatten(-1, (blocks.shape[0], -1))
        return torch.einsum("orb,rcb->orc", flat, blocks).reshape(weight.shape)

    def _merged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        return self._rotate_weight(adapter_name, weight, inverse=False)

    def _unmerged_weight(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        return self._rotate_weight(adapter_name, weight, inverse=True)

    def __repr__(self) -> str:
        return "oft." + super().__repr__()


class Linear(OFTLayer):
    """OFT on `nn.Linear`: the base layer sees `x R`."""

    transforms_input = True

    @property
    def rotation_dim(self) -> int:
        return self.get_base_layer().in_features

    def _transform_input(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        return self._rotation(adapter_name)(x)

    def _apply_adapter(self, adapter_name, x, result, base_result) -> torch.Tensor:
        return result  # the rotation already acted on the input


class Conv2d(OFTLayer):
    """OFT on `nn.Conv2d` (square kernels, no dilation): rotations of the flattened `C x k x k` patches."""

    transforms_input = True

    def _check_base(self) -> None:
        base = self.get_base_layer()
        if base.dilation[0] > 1 or base.dilation[1] > 1:
            raise ValueError("Conv2d with dilation > 1 is not supported by OFT.")
        if base.kernel_size[0] != base.kernel_size[1]:
            raise ValueError(
                f"OFT supports square Conv2d kernels only, got kernel_size={base.kernel_size} (peft 0.21 fails on "
                "these too); adapt this layer with LoRA, or exclude it."
            )
        if base.groups > 1:
            raise ValueError(
                f"OFT does not support grouped convolutions (groups={base.groups}); exclude this layer."
            )

    @property
    def rotation_dim(self) -> int:
        base = self.get_base_layer()
        return base.in_channels * base.kernel_size[0] * base.kernel_size[1]

    def _transform_input(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """peft 0.21's patch rotation (module docstring): unfold, rotate, lay out, fold."""
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        kernel = self.get_base_layer().kernel_size
        channels, area = x.shape[1], kernel[0] * kernel[1]
        patches = F.unfold(x, kernel).transpose(1, 2)  # (B, L, C*k*k)
        rotated = self._rotation(adapter_name)(patches)
        length = rotated.shape[1]
        laid_out = rotated.reshape(x.shape[0], length, channels, area).transpose(1, 2)
        folded = F.fold(laid_out.reshape(x.shape[0], channels * area, length), x.shape[-2:], kernel)
        return folded.squeeze(0) if unbatched else folded

    def _apply_adapter(self, adapter_name, x, result, base_result) -> torch.Tensor:
        return result


class Embedding(OFTLayer):
    """OFT on `nn.Embedding`: the looked-up vectors are rotated, `y = E[x] R`."""

    _rotations_attr = "oft_embedding_R"

    @property
    def rotation_dim(self) -> int:
        return self.get_base_layer().embedding_dim

    def _apply_adapter(self, adapter_name, x, result, base_result) -> torch.Tensor:
        return self._rotation(adapter_name)(result)

    def _rotate_weight(self, adapter_name: str, weight: torch.Tensor, inverse: bool) -> torch.Tensor:
        """`E R` (or `E R^-1`): the table's rows are the vectors the forward rotates."""
        blocks = self._rotation(adapter_name).blocks().float()
        if inverse:
            blocks = torch.linalg.inv(blocks)
        table = weight.float().unflatten(-1, (blocks.shape[0], -1))
        return torch.einsum("nrb,rbc->nrc", table, blocks).reshape(weight.shape)
