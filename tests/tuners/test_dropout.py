"""Adapter input dropout drawn as positions: dropout's distribution, gradient and seeding, and the LoRA
training node that applies it without forming the masked input."""

import math

import pytest
import torch
from tests.conftest import require_native_kernels
from torch import nn

from peftkit import LoraConfig, get_peft_model
from peftkit.tuners import _masked_lowrank
from peftkit.tuners._dropout import AdapterDropout, drop_positions, input_dropout
from peftkit.tuners.lora import fast_paths


@pytest.mark.parametrize("p", [0.001, 0.05, 0.3, 0.9])
def test_drop_rate_is_p_within_sampling_error(p):
    n = 4_000_000
    positions = drop_positions(n, p)
    assert bool((positions[1:] > positions[:-1]).all()) and int(positions[0]) >= 0 and int(positions[-1]) < n
    assert abs(len(positions) / n - p) < 5 * math.sqrt(p * (1 - p) / n)  # 5 standard errors


def test_drops_are_independent_of_each_other_and_of_the_position():
    """Gaps between drops are geometric (memoryless): a bias in the gap formula, or in one half of the
    64-bit draws the uniforms come from, would skew the rate at even vs odd positions or after a drop."""
    p, n = 0.3, 3_000_000
    dropped = torch.zeros(n, dtype=torch.bool)
    dropped[drop_positions(n, p)] = True
    standard_error = math.sqrt(p * (1 - p) / (n // 2))
    for part in (dropped[0::2], dropped[1::2]):
        assert abs(part.double().mean().item() - p) < 5 * standard_error
    after_a_drop = dropped[1:][dropped[:-1]].double().mean().item()
    assert abs(after_a_drop - p) < 5 * math.sqrt(p * (1 - p) / (n * p))
    # the first chunk of uniforms is sized for the expected count: a short draw continues seamlessly
    assert abs(dropped[: n // 2].double().mean().item() - dropped[n // 2 :].double().mean().item()) < 0.005


def test_output_and_gradient_scale_the_kept_values(dropout_engine):
    torch.manual_seed(0)
    dropout = AdapterDropout(p=0.1).train()
    x = torch.randn(64, 304, requires_grad=True)
    y = dropout(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    kept = y != 0
    torch.testing.assert_close(y, torch.where(kept, x / 0.9, 0.0), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x.grad, torch.where(kept, grad / 0.9, 0.0), atol=1e-6, rtol=1e-6)
    assert 0.85 < kept.double().mean().item() < 0.95


def test_non_contiguous_input_drops_in_its_logical_order():
    torch.manual_seed(4)
    x = torch.randn(300, 64).t()  # a transposed view
    torch.manual_seed(5)
    y = AdapterDropout(p=0.2).train()(x)
    torch.manual_seed(5)
    expected = (x.contiguous() * (1 / 0.8)).view(-1).index_fill(0, drop_positions(x.numel(), 0.2), 0.0)
    assert torch.equal(y, expected.view(x.shape))


def test_non_contiguous_input_drops_in_its_logical_order_in_the_kernels():
    require_native_kernels()
    torch.manual_seed(4)
    x = torch.randn(304, 64).t()  # a transposed view, 304 wide: the kernels apply
    torch.manual_seed(5)
    y = AdapterDropout(p=0.2).train()(x)
    torch.manual_seed(5)  # the same draw, as the LoRA node's product makes it
    _, bits = _masked_lowrank.masked_product(x.contiguous(), torch.zeros(1, 304), 0.2)
    kept = _masked_lowrank.kept(bits, 304)
    assert torch.equal(y != 0, kept & (x != 0))
    torch.testing.assert_close(y, torch.where(kept, x / 0.8, 0.0), atol=1e-6, rtol=1e-6)


def test_seeded_runs_repeat_and_different_seeds_differ(dropout_engine):
    dropout = AdapterDropout(p=0.2).train()
    x = torch.ones(1000)

    def run(seed):
        torch.manual_seed(seed)
        return dropout(x)

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_eval_mode_and_zero_rate_leave_the_input_alone():
    x = torch.randn(4, 8)
    assert AdapterDropout(p=0.3).eval()(x) is x
    assert isinstance(input_dropout(0.0), nn.Identity)
    assert isinstance(input_dropout(0.1), nn.Dropout)  # code that checks for nn.Dropout still finds it


@pytest.mark.parametrize("inplace, p", [(True, 0.3), (False, 1.0)])
def test_inplace_and_rate_one_use_torch_dropout(inplace, p):
    x = torch.ones(10_000)
    torch.manual_seed(3)
    ours = AdapterDropout(p=p, inplace=inplace).train()(x.clone())
    torch.manual_seed(3)
    assert torch.equal(ours, nn.functional.dropout(x.clone(), p, training=True, inplace=inplace))


def _lora_layer(p, dtype=torch.float32):
    torch.manual_seed(0)
    model = get_peft_model(
        nn.Sequential(nn.Linear(48, 24)).to(dtype),
        LoraConfig(target_modules=["0"], r=4, lora_dropout=p, init_lora_weights=False),
        autocast_adapter_dtype=False,  # factors in the base's dtype: the fused node applies
    ).train()
    return model.base_model.model[0]


@pytest.mark.parametrize("p", [0.05, 0.25, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["batched", "transposed"])
def test_lora_training_node_equals_the_formula_with_the_same_drops(p, dtype, layout, dropout_engine):
    """The node gives the op-by-op formula on the same dropped positions: output and all three gradients.
    It applies the dropout in the native kernels (float32, any rate), as sparse corrections (the positions,
    up to p = 0.25), or else runs the dropout module before it. `transposed`: a 2-D input that is a
    transposed view (not contiguous), dropped in its logical order."""
    layer = _lora_layer(p, dtype)
    if layout == "batched":
        source = torch.randn(2, 40, 48, dtype=dtype, requires_grad=True)
    else:
        source = torch.randn(48, 80, dtype=dtype, requires_grad=True)

    def layer_input():
        return source if layout == "batched" else source.t()

    x = layer_input()
    assert fast_paths.fused_training_applies(layer, ["default"], x, (), {})
    assert x.is_contiguous() == (layout == "batched")
    in_node = fast_paths._in_node_dropout(layer.lora_dropout["default"], x)
    if dropout_engine == "kernels" and dtype == torch.float32:
        assert isinstance(in_node, fast_paths._KernelDrop)
    else:
        assert isinstance(in_node, fast_paths._SparseDrop) if p <= 0.25 else in_node is None
    torch.manual_seed(7)
    out = layer(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    fused = [source.grad, layer.lora_A["default"].weight.grad, layer.lora_B["default"].weight.grad]
    source.grad = None
    layer.zero_grad()
    x = layer_input()
    torch.manual_seed(7)
    dropped = AdapterDropout(p=p).train()(x)
    lora_A, lora_B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = layer.base_layer(x) + dropped @ lora_A.T @ lora_B.T * layer.scaling["default"]
    expected.backward(grad)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out, expected, atol=tolerance, rtol=tolerance)
    reference = [source.grad, lora_A.grad, lora_B.grad]
    for ours, theirs in zip(fused, reference):
        torch.testing.assert_close(ours, theirs, atol=tolerance, rtol=tolerance)
    assert 0 < (dropped == 0).double().mean().item() < 2 * p  # dropout did drop something


def test_lora_training_node_with_bfloat16_runs_dropout_before_it():
    layer = _lora_layer(0.1, torch.bfloat16)
    x = torch.randn(2, 40, 48, dtype=torch.bfloat16)
    assert fast_paths.fused_training_applies(layer, ["default"], x, (), {})
    torch.manual_seed(7)
    out = layer(x)
    torch.manual_seed(7)
    dropped = AdapterDropout(p=0.1).train()(x)
    lora_A, lora_B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = layer.base_layer(x) + dropped @ lora_A.T @ lora_B.T * layer.scaling["default"]
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)
