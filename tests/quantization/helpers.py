"""Tiny models whose linear layers are bitsandbytes layers (quantized on the CPU, no download)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def quantizable_llama(seed: int = 0, **overrides):
    """The tiny Llama, 64 wide (bitsandbytes' CPU 4-bit kernel needs widths divisible by its block size)."""
    from tests.conftest import tiny_llama

    return tiny_llama(seed, **{"hidden_size": 64, "intermediate_size": 128, **overrides})


def quantize_linears(
    model: nn.Module,
    bits: int = 4,
    quant_type: str = "nf4",
    double_quant: bool = False,
    compute_dtype: torch.dtype = torch.float32,
    skip: tuple[str, ...] = ("lm_head",),
) -> nn.Module:
    """Replace every `nn.Linear` (but `skip`) by a bitsandbytes layer holding the same weights, quantized."""
    import bitsandbytes as bnb

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or name in skip:
                continue
            weight = child.weight.data.clone()
            if bits == 4:
                layer = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    compute_dtype=compute_dtype,
                    compress_statistics=double_quant,
                    quant_type=quant_type,
                    device="meta",
                )
                layer.weight = bnb.nn.Params4bit(
                    weight, requires_grad=False, compress_statistics=double_quant, quant_type=quant_type
                )
                # On a CPU with AVX512-BF16, bitsandbytes (0.49+) repacks a 4-bit weight on its first eval
                # forward without grad and from then on computes in bfloat16 (~1e-3 off the dequantized
                # float32 weight): the tests would then check bitsandbytes' kernel choice, not peftkit's
                # numbers, and pass or fail with the CPU. Off here; the repacked format has its own test
                # (test_qlora.py, test_repacked_4bit_weights_merge_as_dequantize_merge_requantize).
                layer.support_avx512bf16_for_cpu = False
            else:
                layer = bnb.nn.Linear8bitLt(
                    child.in_features, child.out_features, bias=child.bias is not None, has_fp16_weights=False
                )
                layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
            if child.bias is not None:
                layer.bias = nn.Parameter(child.bias.data.clone(), requires_grad=False)
            setattr(parent, name, layer.to("cpu"))
    if bits == 4:
        model.is_loaded_in_4bit = True
    else:
        model.is_loaded_in_8bit = True
    return model


def dequantized_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` with every quantized linear layer replaced by a plain `nn.Linear` holding its
    dequantized weight: the floating-point reference a quantized model's numbers are checked against."""
    from peftkit.tuners._quantized import dense_linear, quantization_backend

    copied = copy.deepcopy(model)
    for parent in list(copied.modules()):
        for name, child in list(parent.named_children()):
            if quantization_backend(child) is not None:
                setattr(parent, name, dense_linear(child))
    return copied
