"""The block-circulant algebra of C3A (names as PEFT's `c3a/utils.py`).

A kernel of shape (m, n, b) stands for the (m*b, n*b) matrix whose (i, j) block is the circulant
matrix C(k_ij)[r, c] = k_ij[(c - r) mod b]. Multiplying by it is a circular cross-correlation per block
pair, computed with real FFTs: `C(k) x = irfft(rfft(x) * conj(rfft(k)))`.
"""

from __future__ import annotations

from typing import Any

import torch


def _blocks(x: torch.Tensor, count: int, block: int) -> torch.Tensor:
    return x.reshape(*x.shape[:-1], count, block)


def _correlate(x_freq: torch.Tensor, kernel_freq: torch.Tensor, block: int) -> torch.Tensor:
    """`y_i = sum_j irfft(x_j * conj(k_ij))`, blocks flattened into the last dimension."""
    y_freq = torch.einsum("...jf,ijf->...if", x_freq, kernel_freq.conj())
    y = torch.fft.irfft(y_freq, n=block, dim=-1)
    return y.reshape(*y.shape[:-2], -1)


class BlockCircularConvolution(torch.autograd.Function):
    """`y = [C(k_ij)] x` over the last dimension of x; only x and the kernel are kept for the backward.

    Backward: dL/dx_j = sum_i C(k_ij)^T g_i (a circular convolution, `irfft(g_i * k_ij)`) and
    dL/dk_ij[d] = sum over samples of sum_r g_i[r] x_j[r + d] (`irfft(x_j * conj(g_i))`).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        _, in_blocks, block = kernel.shape
        ctx.save_for_backward(x, kernel)
        x_freq = torch.fft.rfft(_blocks(x, in_blocks, block), dim=-1)
        return _correlate(x_freq, torch.fft.rfft(kernel, dim=-1), block)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, kernel = ctx.saved_tensors
        out_blocks, in_blocks, block = kernel.shape
        grad_freq = torch.fft.rfft(_blocks(grad_output, out_blocks, block), dim=-1)
        grad_x = grad_kernel = None
        if ctx.needs_input_grad[0]:
            kernel_freq = torch.fft.rfft(kernel, dim=-1)
            x_grad_freq = torch.einsum("...if,ijf->...jf", grad_freq, kernel_freq)
            grad_x = torch.fft.irfft(x_grad_freq, n=block, dim=-1).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            x_freq = torch.fft.rfft(_blocks(x, in_blocks, block), dim=-1)
            kernel_grad_freq = torch.einsum("...jf,...if->ijf", x_freq, grad_freq.conj())
            grad_kernel = torch.fft.irfft(kernel_grad_freq, n=block, dim=-1)
        return grad_x, grad_kernel


def block_circular_convolution(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """`[C(k_ij)] x` over the last dimension of `x` (differentiable in both)."""
    return BlockCircularConvolution.apply(x, kernel)


def get_circulant_fast(kernel: torch.Tensor) -> torch.Tensor:
    """The (m*b, n*b) matrix `[C(k_ij)]`, built exactly by indexing (no FFT round-off)."""
    out_blocks, in_blocks, block = kernel.shape
    steps = torch.arange(block, device=kernel.device)
    shift = (steps.unsqueeze(0) - steps.unsqueeze(1)) % block  # shift[r, c] = (c - r) mod b
    blocks = kernel[:, :, shift]  # (i, j, r, c)
    return blocks.permute(0, 2, 1, 3).reshape(out_blocks * block, in_blocks * block)
