"""Quantization backends other than bitsandbytes: LoRA on their layers is refused with an error that names
the backend (instead of adapting a packed weight as if it were a plain one)."""

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
        ("hqq.core.quantize", "HQQLinear", "HQQ"),
        ("auto_gptq.nn_modules.qlinear.qlinear_cuda", "QuantLinear", "GPTQ"),
        ("gptqmodel.nn_modules.qlinear.torch", "TorchQuantLinear", "GPTQ"),
        ("awq.modules.linear.gemm", "WQLinear_GEMM", "AWQ"),
        ("eetq.modules.qlinear", "EetqLinear", "EETQ"),
        ("aqlm.inference", "QuantizedLinear", "AQLM"),
    ],
)
def test_layers_of_other_backends_are_refused_by_name(module, name, backend):
    model = nn.Sequential()
    model.add_module("proj", _backend_layer(module, name))
    with pytest.raises(ValueError, match=rf"LoRA on {backend}.*{name}.*bitsandbytes"):
        peftkit.get_peft_model(model, peftkit.LoraConfig(target_modules=["proj"]))
    assert type(model.proj).__name__ == name  # nothing was replaced


def test_torchao_quantized_weight_in_a_plain_linear_is_refused():
    class AffineQuantizedTensor(torch.Tensor):
        pass

    AffineQuantizedTensor.__module__ = "torchao.dtypes.affine_quantized_tensor"
    model = nn.Sequential()
    model.add_module("proj", nn.Linear(4, 4))
    model.proj.weight = nn.Parameter(
        torch.randn(4, 4).as_subclass(AffineQuantizedTensor), requires_grad=False
    )
    assert type(model.proj.weight).__module__.startswith("torchao")
    with pytest.raises(ValueError, match="LoRA on torchao"):
        peftkit.get_peft_model(model, peftkit.LoraConfig(target_modules=["proj"]))
