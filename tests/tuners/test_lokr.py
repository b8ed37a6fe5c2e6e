"""LoKr against peft: files move both ways with the same logits, same parameter names and files,
merge/unmerge/disable and training, for every factor layout (full, low-rank, both low-rank, Tucker)."""

import itertools

import pytest
import torch
from tests.conftest import conv_net, perturb_adapter_weights, tiny_llama
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case, conv_case

import peftkit
from peftkit.tuners.lokr.layer import factorization

METHOD = "LoKrConfig"
CONV_TARGETS = ["lin", "conv1d", "conv2d", "conv2d_1x1"]

CASES = {
    "llama_low_rank_w2": Case(tiny_llama, {"target_modules": ["q_proj", "v_proj"], "r": 2, "alpha": 3}),
    "llama_full_lycoris_init": Case(
        tiny_llama, {"target_modules": ["k_proj", "down_proj"], "r": 16, "init_weights": "lycoris"}
    ),
    "llama_decompose_both": Case(
        tiny_llama,
        {"target_modules": ["q_proj", "up_proj"], "r": 1, "decompose_both": True, "decompose_factor": 8},
    ),
    "llama_defaults_patterns": Case(
        tiny_llama, {"rank_pattern": {"q_proj": 1}, "alpha_pattern": {"v_proj": 2}}, task_type="CAUSAL_LM"
    ),
    "conv_low_rank": conv_case({"target_modules": CONV_TARGETS, "r": 1}),
    # full W2 on a Conv1d: peft's Kronecker layout (kept for identical numbers)
    "conv_full": conv_case({"target_modules": CONV_TARGETS, "r": 8}),
}
# Tucker-factorised W2 on kernels > 1: peft 0.21 creates and saves it, but its forward fails inside
# `torch.kron` on the strided rebuild; peftkit computes it (checked against the formula below)
EFFECTIVE = conv_case({"target_modules": CONV_TARGETS, "r": 1, "use_effective_conv2d": True})
ALL_CASES = {**CASES, "conv_effective": EFFECTIVE}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_low_rank_w2",
        same_files=ALL_CASES,
        merge=ALL_CASES,
        no_match="conv_low_rank",
    )
)


@pytest.mark.parametrize(
    ("dimension", "factor", "expected"),
    [
        (48, -1, (6, 8)),
        (64, -1, (8, 8)),
        (12, -1, (3, 4)),
        (97, -1, (1, 97)),
        (48, 4, (4, 12)),
        (8, 4, (4, 2)),
        (64, 3, (2, 32)),
        (30, 0, (1, 30)),
    ],
)
def test_factorization(dimension, factor, expected):
    """The split LyCORIS/peft use: a dividing factor as given, else the most square divisor pair."""
    assert factorization(dimension, factor) == expected


def test_invalid_init_weights_is_a_clear_error():
    with pytest.raises(ValueError, match="True, False or 'lycoris'"):
        peftkit.LoKrConfig(init_weights="gaussian")


def test_rank_dropout_rescales_only_when_asked():
    """Without rank_dropout_scale the kept rows of the delta are unscaled; with it, scaled by 1/mean."""
    for rescale in (False, True):
        lin = torch.nn.Sequential(torch.nn.Linear(8, 16))
        config = peftkit.LoKrConfig(target_modules=["0"], r=2, rank_dropout=0.5, rank_dropout_scale=rescale)
        model = peftkit.get_peft_model(lin, config)
        perturb_adapter_weights(model, scale=0.5)
        layer = model.base_model.model[0]
        x = torch.eye(8)
        with torch.no_grad():
            full = model.eval().base_model.model[0](x) - layer.base_layer(x)
            model.train()
            torch.manual_seed(1)
            dropped = layer(x) - layer.base_layer(x)
        kept = dropped.abs().amax(0) > 0
        assert 0 < kept.sum() < 16
        scale = 16 / kept.sum().item() if rescale else 1.0
        torch.testing.assert_close(dropped, full * kept * scale, atol=1e-5, rtol=1e-5)


def test_effective_conv_delta_follows_the_tucker_formula():
    """dW = (alpha/r) kron(W1, T2 x W2a x W2b) with W[p, q, k, l] = sum_ij T[i, j, k, l] W2a[i, p] W2b[j, q]."""
    model = peftkit.get_peft_model(conv_net(), peftkit.LoKrConfig(**EFFECTIVE.config, alpha=3))
    perturb_adapter_weights(model, scale=0.5)
    tucker = [m for m in model.modules() if "default" in getattr(m, "lokr_t2", {})]
    assert tucker, "the 8->8 Conv1d (kernel 3) gets a Tucker W2 at r=1"
    for layer in tucker:
        t2, w_a, w_b = (getattr(layer, f"lokr_{k}")["default"].detach() for k in ("t2", "w2_a", "w2_b"))
        w1 = layer.lokr_w1["default"].detach()
        out_k, in_n = w_a.shape[1], w_b.shape[1]
        w2 = torch.zeros(out_k, in_n, *t2.shape[2:])
        for p, q, i, j in itertools.product(
            range(out_k), range(in_n), range(t2.shape[0]), range(t2.shape[1])
        ):
            w2[p, q] += t2[i, j] * w_a[i, p] * w_b[j, q]
        expected = torch.kron(w1[:, :, None, None], w2).reshape(layer.base_layer.weight.shape) * 3.0
        torch.testing.assert_close(layer.get_delta_weight("default"), expected, atol=1e-6, rtol=1e-5)
