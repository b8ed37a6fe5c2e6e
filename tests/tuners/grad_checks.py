"""Gradients against peft: the same adapter weights in both libraries give the same gradients.

`method_checks` compares outputs; this compares what training sees, so a method whose backward is its own
(a custom autograd function, a shared bank reached from many layers) is held to peft's numbers too.
"""

from __future__ import annotations

import copy

import torch
from tests.tuners.method_checks import Case, _configs, peft_model

import peftkit

GRAD_ATOL = 1e-5  # fp32 gradients, summed over a few layers' contributions


def check_gradients_equal_peft(method: str, case: Case, atol: float = GRAD_ATOL) -> None:
    """peft's perturbed adapter copied into peftkit: every trainable tensor gets the same gradient of the
    same loss (a fixed random projection of the outputs), within `atol`."""
    base = case.model_fn()
    theirs = peft_model(method, case, base)  # eval: no dropout, gradients still flow
    _, ours_config = _configs(method, case)
    ours = peftkit.get_peft_model(copy.deepcopy(base), ours_config).eval()
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not missing and not unexpected
    inputs = case.inputs_fn()
    grads = []
    for model in (theirs, ours):
        model.zero_grad()
        out = case.out_fn(model, inputs)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
        (out * weights).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert sorted(grads[1]) == sorted(grads[0])
    assert any(g is not None and g.abs().max() > 0 for g in grads[0].values()), (
        "no gradient reached the adapter"
    )
    for name, expected in grads[0].items():
        actual = grads[1][name]
        assert (expected is None) == (actual is None), name
        if expected is not None:
            diff = (actual - expected).abs().max().item()
            assert diff <= atol, f"gradient of {name}: max abs difference {diff:.3g} > {atol}"
