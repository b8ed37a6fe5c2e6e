"""Adapter input dropout: the cheaper CPU mask keeps dropout's distribution, gradient and seeding."""

import math

import pytest
import torch
from torch import nn

from peftkit import LoraConfig, get_peft_model
from peftkit.tuners._dropout import AdapterDropout, drop_level, input_dropout, keep_mask


@pytest.mark.parametrize("p", [0.05, 0.1, 0.3])
def test_drop_rate_is_p_within_rounding_and_sampling_error(p):
    level = drop_level(p)
    q = level / 2**15
    assert abs(q - p) <= 1e-3 * p  # the rounding the module docstring promises
    n = 2_000_000
    dropped = (keep_mask(n, level) == 0).double().mean().item()
    assert abs(dropped - q) < 5 * math.sqrt(q * (1 - q) / n)  # 5 standard errors


def test_each_of_the_four_levels_of_a_draw_is_uniform():
    """A 64-bit draw gives four 15-bit levels; a biased one (e.g. the top part's sign bit) would show here."""
    level = drop_level(0.5)
    n = 4 * 500_000
    kept_by_position = keep_mask(n, level).view(-1, 4).double().mean(0)
    assert torch.all((kept_by_position - 0.5).abs() < 5 * math.sqrt(0.25 / (n // 4)))


def test_output_and_gradient_scale_the_kept_values():
    torch.manual_seed(0)
    dropout = AdapterDropout(p=0.1).train()
    x = torch.randn(64, 300, requires_grad=True)
    y = dropout(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    kept = y != 0
    scale = 1 / (1 - drop_level(0.1) / 2**15)
    torch.testing.assert_close(y, torch.where(kept, x * scale, 0.0), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x.grad, torch.where(kept, grad * scale, 0.0), atol=1e-6, rtol=1e-6)
    assert 0.8 < kept.double().mean().item() < 0.98


def test_seeded_runs_repeat_and_different_seeds_differ():
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


@pytest.mark.parametrize("p", [1e-5, 0.0007])
def test_rates_the_rounding_would_change_use_torch_dropout(p):
    assert drop_level(p) is None
    x = torch.ones(10_000)
    torch.manual_seed(3)
    ours = AdapterDropout(p=p).train()(x)
    torch.manual_seed(3)
    assert torch.equal(ours, nn.functional.dropout(x, p, training=True))


def test_lora_training_forward_applies_this_dropout_to_the_adapter_input():
    torch.manual_seed(0)
    model = get_peft_model(
        nn.Sequential(nn.Linear(16, 8)),
        LoraConfig(target_modules=["0"], r=4, lora_dropout=0.25, init_lora_weights=False),
    ).train()
    layer = model.base_model.model[0]
    assert isinstance(layer.lora_dropout["default"], AdapterDropout)
    x = torch.randn(32, 16)
    torch.manual_seed(7)
    actual = layer(x)
    torch.manual_seed(7)
    dropped = AdapterDropout(p=0.25).train()(x)
    lora_A, lora_B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = layer.base_layer(x) + dropped @ lora_A.T @ lora_B.T * layer.scaling["default"]
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
