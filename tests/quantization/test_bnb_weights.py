"""`tuners/_bnb.py`: a bitsandbytes layer's weight read as numbers and written back. Numbers already on the
4- or 8-bit grid survive requantization exactly, and the layer then computes with the new weight."""

from __future__ import annotations

import pytest
import torch
from tests.quantization.helpers import quantize_linears
from torch import nn

from peftkit.tuners._bnb import bnb_layer_bits, dequantized_weight, requantized_weight


def _quantized_linear(bits: int) -> nn.Module:
    torch.manual_seed(0)
    holder = nn.Sequential(nn.Linear(64, 64))
    quantize_linears(holder, bits=bits, skip=())
    return holder[0]


@pytest.mark.parametrize("bits", [4, 8])
def test_requantizing_dequantized_numbers_is_exact(bits):
    layer = _quantized_linear(bits)
    assert bnb_layer_bits(layer) == bits and bnb_layer_bits(nn.Linear(2, 2)) is None
    weight = dequantized_weight(layer)
    assert weight.shape == (64, 64) and weight.dtype == torch.float32
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = layer(x)
        layer.weight = requantized_weight(layer, weight)
        after = layer(x)
    assert torch.equal(dequantized_weight(layer), weight)
    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_a_new_weight_is_what_the_layer_computes_with():
    layer = _quantized_linear(4)
    old = dequantized_weight(layer)
    target = old + 0.05 * torch.randn(old.shape, generator=torch.Generator().manual_seed(2))
    layer.weight = requantized_weight(layer, target)
    new = dequantized_weight(layer)
    assert not torch.equal(new, old)
    # rounded to the nf4 grid: at most half its widest step (~0.28 of the block's largest magnitude)
    assert (new - target).abs().max() <= 0.15 * target.abs().max()
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ new.T + layer.bias, atol=1e-5, rtol=0)
