"""`OrthLayer`: PSOFT's trained r x r transformation R, applied as `x -> x R^T`.

    orthogonal (psoft_orth=True):  Q = skew(w)  (w: the r(r-1)/2 entries above the diagonal)
                                   R = (I + Q)(I - Q)^-1                       (Cayley map), or
                                   R ~ I + 2Q + 2Q^2 + ... + 2Q^(n-2) + Q^(n-1)  (Neumann, n terms)
    free (psoft_orth=False):       R = w  (r x r)
    then                           R <- diag(vector_b) R diag(vector_a)        (when enabled)

With `init_weights` R starts as the identity (w = 0, or w = I for a free R; vectors of ones).
"""

from __future__ import annotations

import torch
from torch import nn

_HALF = (torch.float16, torch.bfloat16)


def neumann_coefficients(terms: int) -> list[float]:
    """Coefficients of Q^0, Q^1, ... in the Neumann approximation of the Cayley map, as PEFT sums it: the
    last power has coefficient 1, the others 2; from 3 terms on the series reaches at least Q^3."""
    if terms <= 1:
        return [1.0]
    if terms == 2:
        return [1.0, 2.0]
    last = max(terms - 1, 3)
    return [1.0] + [2.0] * (last - 1) + [1.0]


class OrthLayer(nn.Module):
    """R of one PSOFT adapter (see the module docstring)."""

    def __init__(
        self,
        size: int,
        orth: bool = True,
        mag_b: bool = True,
        mag_a: bool = True,
        use_cayley_neumann: bool = False,
        num_cayley_neumann_terms: int = 5,
        cayley_neumann_eps: float | None = None,
    ) -> None:
        super().__init__()
        self.size = size
        self.orth = orth
        self.mag_b, self.mag_a = mag_b, mag_a
        self.use_cayley_neumann = use_cayley_neumann
        self.num_cayley_neumann_terms = num_cayley_neumann_terms
        self.cayley_neumann_eps = cayley_neumann_eps
        if orth:
            self.weight = nn.Parameter(torch.empty(size * (size - 1) // 2))
            # on the CPU explicitly: real indices also under low_cpu_mem_usage's meta-device context
            rows, cols = torch.triu_indices(size, size, 1, device="cpu")
            self.register_buffer("rows", rows, persistent=False)
            self.register_buffer("cols", cols, persistent=False)
        else:
            self.weight = nn.Parameter(torch.empty(size, size))
        self.vector_b = nn.Parameter(torch.empty(size)) if mag_b else None
        self.vector_a = nn.Parameter(torch.empty(size)) if mag_a else None

    def reset_parameters(self, init_weights: bool = True) -> None:
        """R = I; with `init_weights=False` the skew entries ~ N(0, 0.1^2) (a free R: I + N(0, 0.1^2))."""
        params = [p for p in (self.weight, self.vector_b, self.vector_a) if p is not None]
        if any(p.is_meta for p in params):
            return  # filled from a file later
        with torch.no_grad():
            if self.orth:
                if init_weights:
                    self.weight.zero_()
                else:
                    nn.init.normal_(self.weight, mean=0.0, std=0.1)
            else:
                nn.init.eye_(self.weight)
                if not init_weights:
                    self.weight.add_(torch.randn_like(self.weight) * 0.1)
            for vector in params[1:]:
                vector.fill_(1.0)

    def _skew_symmetric(self) -> torch.Tensor:
        upper = torch.zeros(self.size, self.size, device=self.weight.device, dtype=self.weight.dtype)
        upper = upper.index_put((self.rows, self.cols), self.weight)
        return upper - upper.T

    def _neumann(self, Q: torch.Tensor) -> torch.Tensor:
        eps = self.cayley_neumann_eps
        if eps is not None:
            norm = torch.linalg.norm(Q, ord="fro")
            if torch.isfinite(norm) and norm > eps:
                Q = Q * (eps / (norm + 1e-12))
        coefficients = neumann_coefficients(int(self.num_cayley_neumann_terms))
        R = torch.eye(self.size, device=Q.device, dtype=Q.dtype)
        power = None
        for coefficient in coefficients[1:]:
            power = Q if power is None else power @ Q
            R = R + coefficient * power
        return R

    def get_matrix(self) -> torch.Tensor:
        """R (r x r), in the dtype of the trained tensors (the Cayley solve runs in fp32 for half ones)."""
        dtype = self.weight.dtype
        if not self.orth:
            R = self.weight
        elif self.use_cayley_neumann:
            R = self._neumann(self._skew_symmetric())
        else:
            Q = self._skew_symmetric()
            Q = Q.float() if dtype in _HALF else Q  # the solver needs fp32
            eye = torch.eye(self.size, device=Q.device, dtype=Q.dtype)
            R = torch.linalg.solve(eye - Q, eye + Q, left=False)  # R (I - Q) = I + Q
        if self.vector_b is not None:
            R = self.vector_b[:, None] * R
        if self.vector_a is not None:
            R = R * self.vector_a[None, :]
        return R.to(dtype)  # only the fp32 Cayley solve of half-precision tensors changes it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x R^T`, in fp32 for half-precision inputs on the CPU."""
        compute = torch.float32 if x.device.type == "cpu" and x.dtype in _HALF else x.dtype
        return (x.to(compute) @ self.get_matrix().to(compute).T).to(x.dtype)

    def __repr__(self) -> str:
        return (
            f"psoft.{type(self).__name__}(size={self.size}, orth={self.orth}, "
            f"use_cayley_neumann={self.use_cayley_neumann}, num_cayley_neumann_terms={int(self.num_cayley_neumann_terms)}, "
            f"cayley_neumann_eps={self.cayley_neumann_eps}, mag_a={self.mag_a}, mag_b={self.mag_b})"
        )
