"""The native low-rank kernels: each product equals torch's, without a mask and on the mask it drew, and
the mask is an independent Bernoulli(p) draw per value, governed by torch's seed."""

import math

import pytest
import torch
from tests.conftest import require_native_kernels, torch_threads

from peftkit.tuners import _masked_lowrank


@pytest.fixture(autouse=True)
def _kernels():
    require_native_kernels()


# rows not a multiple of the kernels' 6-row blocks nor of the 30-row spans dA and dB pack; ranks below,
# at and above the 16-wide rank blocks; widths ending in an 8-wide strip (8, 24, 1544) and in 16-wide
# ones, and wider than the row products' 512-column chunks (1544: three and 8 columns)
@pytest.mark.parametrize(
    "tokens, features, rank",
    [(1, 8, 4), (37, 24, 8), (50, 48, 16), (13, 1544, 24), (64, 576, 64), (70, 1536, 16), (95, 40, 3)],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_products_equal_torch_with_and_without_the_drawn_mask(tokens, features, rank, threads):
    with torch_threads(threads):
        x, lora_A = torch.randn(tokens, features), torch.randn(rank, features)
        grad_hidden = torch.randn(tokens, rank)
        hidden, bits = _masked_lowrank.masked_product(x, lora_A, 0.3)
        factor_grad = _masked_lowrank.masked_factor_grad(x, bits, grad_hidden)
        input_grad = _masked_lowrank.lowrank_expand(grad_hidden, lora_A, bits)
        plain_input_grad = _masked_lowrank.lowrank_expand(grad_hidden, lora_A)
        plain_hidden = _masked_lowrank.lowrank_product(x, lora_A)
        plain_factor_grad = _masked_lowrank.masked_factor_grad(x, None, grad_hidden)
        # x as an output gradient dy, A^T as B (features, rank), dh as h
        dy_B, h_t_dy = _masked_lowrank.output_grads(x, lora_A.t(), grad_hidden)
    keep = _masked_lowrank.kept(bits, features).double()
    masked, A64, dh64 = x.double() * keep, lora_A.double(), grad_hidden.double()
    # float32 sums of up to 1544 products of unit normals against float64: 1e-4 relative, 1e-4 absolute
    tolerance = {"atol": 1e-4, "rtol": 1e-4}
    torch.testing.assert_close(hidden.double(), masked @ A64.T, **tolerance)
    torch.testing.assert_close(factor_grad.double(), dh64.T @ masked, **tolerance)
    torch.testing.assert_close(input_grad.double(), (dh64 @ A64) * keep, **tolerance)
    torch.testing.assert_close(plain_hidden.double(), x.double() @ A64.T, **tolerance)
    torch.testing.assert_close(plain_factor_grad.double(), dh64.T @ x.double(), **tolerance)
    torch.testing.assert_close(plain_input_grad.double(), dh64 @ A64, **tolerance)
    torch.testing.assert_close(dy_B.double(), x.double() @ A64.T, **tolerance)
    torch.testing.assert_close(h_t_dy.double(), dh64.T @ x.double(), **tolerance)
    if tokens * features >= 1000:
        assert 0.2 < 1 - keep.mean().item() < 0.4  # a mask was drawn, near p


def _dropped(tokens: int, features: int, p: float) -> torch.Tensor:
    _, bits = _masked_lowrank.masked_product(torch.zeros(tokens, features), torch.zeros(1, features), p)
    return ~_masked_lowrank.kept(bits, features)


@pytest.mark.parametrize("p", [0.001, 0.05, 0.3, 0.9])
def test_drop_rate_is_p_within_sampling_error(p):
    dropped = _dropped(2000, 2000, p)
    assert abs(dropped.double().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / dropped.numel())


def test_drops_are_independent_of_each_other_of_the_position_and_of_the_call():
    """A weak hash would show as a rate that depends on the lane (column mod 8), on the row, or on the
    neighbour's draw; two draws (two projections of the same input) must not share their masks."""
    p, tokens, features = 0.3, 1500, 1024
    dropped = _dropped(tokens, features, p).double()
    lanes = dropped.view(tokens, features // 8, 8).mean(dim=(0, 1))
    lane_error = math.sqrt(p * (1 - p) / (tokens * features / 8))
    assert (lanes - p).abs().max().item() < 5 * lane_error
    row_rates = dropped.mean(dim=1)  # each row's own rate: spread as a binomial's, no stuck rows
    assert abs(row_rates.std().item() - math.sqrt(p * (1 - p) / features)) < 0.2 * math.sqrt(
        p * (1 - p) / features
    )

    def after_a_drop(first: torch.Tensor, second: torch.Tensor) -> float:
        return second[first.bool()].mean().item()

    conditional_error = 5 * math.sqrt(p * (1 - p) / (tokens * features * p))
    assert abs(after_a_drop(dropped[:, :-1], dropped[:, 1:]) - p) < conditional_error  # the next column
    assert abs(after_a_drop(dropped[:-1], dropped[1:]) - p) < conditional_error  # the next row
    assert abs(after_a_drop(dropped, _dropped(tokens, features, p).double()) - p) < conditional_error


def test_torch_seed_governs_the_mask():
    torch.manual_seed(3)
    first = _dropped(40, 64, 0.2)
    torch.manual_seed(3)
    assert torch.equal(first, _dropped(40, 64, 0.2))
    assert not torch.equal(first, _dropped(40, 64, 0.2))


def test_dropout_and_product_draw_the_same_mask_and_dropout_scales_its_gradient():
    x = torch.randn(30, 40, requires_grad=True)
    torch.manual_seed(9)
    y = _masked_lowrank.dropout(x, 0.25)
    torch.manual_seed(9)
    keep = ~_dropped(30, 40, 0.25)
    torch.testing.assert_close(y, torch.where(keep, x / 0.75, 0.0), atol=1e-6, rtol=1e-6)
    grad = torch.randn_like(y)
    y.backward(grad)
    torch.testing.assert_close(x.grad, torch.where(keep, grad / 0.75, 0.0), atol=1e-6, rtol=1e-6)


def test_applies_to_float32_cpu_inputs_eight_wide():
    assert _masked_lowrank.applies(torch.zeros(3, 16))
    assert not _masked_lowrank.applies(torch.zeros(3, 12))  # the positions path takes other widths
    assert not _masked_lowrank.applies(torch.zeros(3, 16, dtype=torch.float64))
    assert not _masked_lowrank.applies(torch.zeros(0, 16))


def test_double_backward_through_kernel_dropout_says_how_to_avoid_it():
    from peftkit import LoraConfig, get_peft_model

    model = get_peft_model(
        torch.nn.Sequential(torch.nn.Linear(16, 8)),
        LoraConfig(target_modules=["0"], r=4, lora_dropout=0.1, init_lora_weights=False),
    ).train()
    x = torch.randn(4, 16, requires_grad=True)
    with pytest.raises(RuntimeError, match="PEFTKIT_NATIVE_KERNELS=0"):
        torch.autograd.grad(model(x).sum(), x, create_graph=True)
    torch.autograd.grad(model(x).sum(), x)  # a first-order gradient is fine
