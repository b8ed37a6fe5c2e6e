"""LoKr layers: `dW = (alpha / r) * kron(W1, W2)`, on Linear/Conv1d/Conv2d.

With `out = l * k` and `in = m * n` (`factorization`): `W1: (l, m)` (or `W1a @ W1b` with
`decompose_both`), `W2: (k, n[, *kernel])`, or low-rank `W2a @ W2b` (`(k, r) @ (r, n * prod(kernel))`),
or Tucker `rebuild_tucker(T2, W2a, W2b)` for convolutions with `use_effective_conv2d`. The Kronecker
product is reshaped to the base weight's shape.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..lycoris_utils import LycorisLayer, kaiming_init, rebuild_tucker


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split `dimension` into `(m, n)` with `m * n == dimension`, as LyCORIS does.

    A positive `factor` that divides `dimension` is `m` (`n = dimension // factor`, even when smaller).
    Otherwise `m` is the largest divisor with `m <= sqrt(dimension)` (the most square split), and with
    `m <= factor` when `factor >= 0` (`factor == 0` therefore gives `(1, dimension)`).
    """
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    limit = dimension if factor < 0 else max(factor, 1)
    m = max(d for d in range(1, math.isqrt(dimension) + 1) if dimension % d == 0 and d <= limit)
    return m, dimension // m


def kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The Kronecker product, as `torch.kron` (the smaller-rank operand padded with leading axes):
    `out[i*B0 + j, k*B1 + l, ...] = a[i, k, ...] * b[j, l, ...]`. Written with broadcasting because
    `torch.kron` fails on some strided inputs (e.g. Tucker rebuilds with r = 1)."""
    dims = max(a.dim(), b.dim())
    a = a.reshape((1,) * (dims - a.dim()) + tuple(a.shape))
    b = b.reshape((1,) * (dims - b.dim()) + tuple(b.shape))
    a_axes = [n for size in a.shape for n in (size, 1)]
    b_axes = [n for size in b.shape for n in (1, size)]
    product = a.reshape(a_axes) * b.reshape(b_axes)
    return product.reshape([x * y for x, y in zip(a.shape, b.shape)])


class LoKrLayer(LycorisLayer):
    """The LoKr factors of each adapter; the framework adds `op(x, dW)` to the base output."""

    adapter_layer_names = (
        "lokr_w1",
        "lokr_w1_a",
        "lokr_w1_b",
        "lokr_w2",
        "lokr_w2_a",
        "lokr_w2_b",
        "lokr_t2",
    )

    def create_adapter_parameters(
        self,
        adapter_name: str,
        r: int,
        use_effective_conv2d: bool = False,
        decompose_both: bool = False,
        decompose_factor: int = -1,
        **kwargs: Any,
    ) -> None:
        in_m, in_n = factorization(self.weight_in_features, decompose_factor)
        out_l, out_k = factorization(self.out_features, decompose_factor)
        if decompose_both and r < max(out_l, in_m) / 2:
            self._new_parameter("lokr_w1_a", adapter_name, out_l, r)
            self._new_parameter("lokr_w1_b", adapter_name, r, in_m)
        else:
            self._new_parameter("lokr_w1", adapter_name, out_l, in_m)
        kernel = self.kernel_size
        if r >= max(out_k, in_n) / 2:
            self._new_parameter("lokr_w2", adapter_name, out_k, in_n, *kernel)
        elif self._uses_tucker(use_effective_conv2d):
            core = kernel if len(kernel) == 2 else (*kernel, 1)  # Conv1d: a (k, 1) core
            self._new_parameter("lokr_t2", adapter_name, r, r, *core)
            self._new_parameter("lokr_w2_a", adapter_name, r, out_k)
            self._new_parameter("lokr_w2_b", adapter_name, r, in_n)
        else:
            self._new_parameter("lokr_w2_a", adapter_name, out_k, r)
            self._new_parameter("lokr_w2_b", adapter_name, r, in_n * math.prod(kernel))

    def reset_adapter_parameters(self, adapter_name: str, init_weights: bool | str) -> None:
        """Every factor kaiming-uniform; then True zeroes W1 (or W1a), 'lycoris' zeroes W2 (or W2b)."""
        present = [n for n in self.adapter_layer_names if adapter_name in getattr(self, n)]
        kaiming_init(*(getattr(self, n)[adapter_name] for n in present))
        if init_weights is True:
            zeroed = "lokr_w1" if "lokr_w1" in present else "lokr_w1_a"
        elif init_weights == "lycoris":
            zeroed = "lokr_w2" if "lokr_w2" in present else "lokr_w2_b"
        else:
            return
        nn.init.zeros_(getattr(self, zeroed)[adapter_name])

    def _w1(self, adapter_name: str) -> torch.Tensor:
        if adapter_name in self.lokr_w1:
            return self.lokr_w1[adapter_name]
        return self.lokr_w1_a[adapter_name] @ self.lokr_w1_b[adapter_name]

    def _w2(self, adapter_name: str) -> torch.Tensor:
        if adapter_name in self.lokr_w2:
            return self.lokr_w2[adapter_name]
        w_a, w_b = self.lokr_w2_a[adapter_name], self.lokr_w2_b[adapter_name]
        if adapter_name in self.lokr_t2:
            return rebuild_tucker(self.lokr_t2[adapter_name], w_a, w_b)
        return w_a @ w_b

    def _unscaled_delta(self, adapter_name: str) -> torch.Tensor:
        """`kron(W1, W2)`. W1 gets two trailing kernel axes only when W2 is 4-d (a Conv2d kernel or a Tucker
        rebuild); a full 3-d Conv1d W2 meets W1 padded to `(1, l, m)`, as in peft 0.21 (its kernel/channel
        layout differs from the Conv2d one, and the numbers are peft's)."""
        w1, w2 = self._w1(adapter_name), self._w2(adapter_name)
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        return kron(w1, w2)

    def __repr__(self) -> str:
        return "lokr." + super().__repr__()


class Linear(LoKrLayer):
    """LoKr on `nn.Linear`."""


class Conv1d(LoKrLayer):
    """LoKr on `nn.Conv1d`."""


class Conv2d(LoKrLayer):
    """LoKr on `nn.Conv2d`."""
