"""Repeated merge/unmerge in bf16/fp16 keeps the base weights within the bound the README states.

Merging computes W + delta in fp32 and rounds it to the weight's dtype; unmerging subtracts the same
delta in fp32 and rounds again. The first cycle can move a weight by the rounding of W + delta, at most
one unit in the last place (ulp) of |W| + |delta| in the half-precision format; from then on the
weights are a fixed point: further cycles change nothing, so the error does not grow with the number
of cycles. The layer test covers every finite bf16 and fp16 value as a base weight.
"""

from __future__ import annotations

import pytest
import torch
from tests.conftest import llama_inputs, tiny_llama
from torch import nn

import peftkit

CYCLES = 300


def _ulp(magnitude: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of `dtype` at `magnitude` (>= 0), in fp32."""
    x = magnitude.to(dtype)
    return torch.nextafter(x, torch.tensor(float("inf"), dtype=dtype)).float() - x.float()


def _every_value(dtype: torch.dtype) -> torch.Tensor:
    """Every finite value of `dtype` (fp16: those that a delta of up to ~1 cannot overflow), as 256x256."""
    values = torch.arange(2**16, dtype=torch.int32).to(torch.int16).view(dtype)
    keep = torch.isfinite(values) & (values.float().abs() < torch.finfo(dtype).max / 2)
    values = torch.where(keep, values, torch.zeros((), dtype=dtype))
    return values.reshape(256, 256)


def _cycles(model: peftkit.PeftModel, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight after the first merge/unmerge cycle, and after CYCLES of them (checked unchanged)."""
    model.merge_adapter()
    model.unmerge_adapter()
    first = weight.detach().clone()
    for _ in range(CYCLES - 1):
        model.merge_adapter()
        model.unmerge_adapter()
    return first, weight.detach().clone()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("delta_scale", [1e-3, 3e-2, 1.0])
def test_every_half_precision_weight_stays_within_one_ulp(dtype, delta_scale):
    layer = nn.Linear(256, 256, bias=False).to(dtype)
    original = _every_value(dtype)
    with torch.no_grad():
        layer.weight.copy_(original)
    model = peftkit.get_peft_model(nn.Sequential(layer), peftkit.LoraConfig(r=8, target_modules=["0"]))
    adapted = model.base_model.model[0]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a delta of about `delta_scale` per element
        adapted.lora_A["default"].weight.copy_(torch.randn(8, 256, generator=gen) * delta_scale**0.5)
        adapted.lora_B["default"].weight.copy_(torch.randn(256, 8, generator=gen) * delta_scale**0.5 / 4)
    delta = adapted.get_delta_weight("default").float()
    assert delta.abs().max() > delta_scale  # the delta is as large as the parameter says

    first, last = _cycles(model, adapted.base_layer.weight)
    assert torch.equal(first, last)  # no drift: cycles after the first change nothing
    error = (last.float() - original.float()).abs()
    bound = _ulp(original.float().abs() + delta.abs(), dtype)
    assert (error <= bound).all(), f"max error {(error / bound).max().item():.3f} ulp"
    assert (error > 0).any()  # the rounding is real: the bound is not trivially met


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_model_merged_and_unmerged_hundreds_of_times(dtype):
    base = tiny_llama().to(dtype)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    model = peftkit.get_peft_model(base, peftkit.LoraConfig(r=8, target_modules="all-linear"))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a trained-looking adapter: deltas about the size of the weights
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, peftkit.tuners.lora.LoraLayer)
    }
    model.merge_adapter()
    model.unmerge_adapter()
    after_one = {k: v.clone() for k, v in model.get_base_model().state_dict().items()}
    with torch.no_grad():
        outputs_after_one = model(**llama_inputs()).logits
    for _ in range(CYCLES - 1):
        model.merge_adapter()
        model.unmerge_adapter()
    state = model.get_base_model().state_dict()
    assert all(torch.equal(state[k], v) for k, v in after_one.items())  # no drift after the first cycle
    with torch.no_grad():
        assert torch.equal(model(**llama_inputs()).logits, outputs_after_one)
    for name, layer in layers.items():
        key = name.removeprefix("base_model.model.") + ".weight"
        weight = layer.base_layer.weight.float()
        bound = _ulp(original[key].float().abs() + layer.get_delta_weight("default").float().abs(), dtype)
        assert ((weight - original[key].float()).abs() <= bound).all(), name
