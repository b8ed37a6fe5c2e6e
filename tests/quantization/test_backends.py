"""Quantization backends peftkit does not adapt (GPTQ, AWQ, EETQ, AQLM, optimum-quanto): LoRA on their
layers is refused with an error that names the backend (instead of adapting a packed weight as if it were
a plain one). Stand-in classes defined in each backend's module: none of these packages installs and runs
on a CPU-only machine with a registry wheel (gptqmodel builds from source and JIT-compiles its CPU
packing), and peft 0.21 has no optimum-quanto support. torchao and HQQ are adapted:
test_torchao_hqq.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import peftkit


def _backend_layer(module: str, name: str) -> nn.Module:
    """A stand-in for a backend's quantized linear layer: a class defined in the backend's module."""
    cls = type(name, (nn.Module,), {"__module__": module, "forward": lambda self, x: x @ self.weight.T})
    layer = cls()
    layer.weight = nn.Parameter(torch.zeros(4, 4, dtype=torch.int8), requires_grad=False)
    return layer


@pytest.mark.parametrize(
    ("module", "name", "backend"),
    [
        ("auto_gptq.nn_modules.qlinear.qlinear_cuda", "QuantLinear", "GPTQ"),
        ("gptqmodel.nn_modules.qlinear.torch", "TorchQuantLinear", "GPTQ"),
        ("awq.modules.linear.gemm", "WQLinear_GEMM", "AWQ"),
        ("eetq.modules.qlinear", "EetqLinear", "EETQ"),
        ("aqlm.inference", "QuantizedLinear", "AQLM"),
        ("optimum.quanto.nn.qlinear", "QLinear", "optimum-quanto"),
    ],
)
def test_layers_of_other_backends_are_refused_by_name(module, name, backend):
    model = nn.Sequential()
    model.add_module("proj", _backend_layer(module, name))
    with pytest.raises(ValueError, match=rf"LORA on {backend}.*{name}.*bitsandbytes"):
        peftkit.get_peft_model(model, peftkit.LoraConfig(target_modules=["proj"]))
    assert type(model.proj).__name__ == name  # nothing was replaced


def test_merging_into_a_forward_only_backend_is_refused_by_name():
    from peftkit.tuners._quantized import check_writable, dense_weight

    layer = _backend_layer("gptqmodel.nn_modules.qlinear.torch", "TorchQuantLinear")
    with pytest.raises(ValueError, match=r"Cannot merge into TorchQuantLinear: .* GPTQ \(gptqmodel\)"):
        check_writable(layer)
    with pytest.raises(ValueError, match="Keep the adapter unmerged"):
        dense_weight(layer)
