"""Backward against peft: the same adapter weights in both libraries give the same gradients.

Shared by the method tests whose brief asks for equal gradients (Uni-LoRA, RoAd, WaveFT). A `Case` of
`method_checks` names the model, config and inputs; the loss is the mean squared error to a seeded target.
"""

from __future__ import annotations

import copy

import torch
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case

import peftkit

GRAD_ATOL = 1e-5  # fp32 gradients of the same loss on the same weights (the brief's bound)


def _gradients(model: torch.nn.Module, case: Case, inputs: dict) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    output = case.out_fn(model, inputs)
    target = torch.randn(output.shape, generator=torch.Generator().manual_seed(0))
    torch.nn.functional.mse_loss(output, target).backward()
    return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


def check_gradients_equal_peft(method: str, case: Case, atol: float = GRAD_ATOL) -> None:
    """peft's perturbed adapter copied into peftkit: every trainable tensor gets the same gradient."""
    base = case.model_fn()
    theirs = checks.peft_model(method, case, base)
    _, ours_config = checks._configs(method, case)
    ours = peftkit.get_peft_model(copy.deepcopy(base), ours_config).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    inputs = case.inputs_fn()
    expected, actual = _gradients(theirs, case, inputs), _gradients(ours, case, inputs)
    assert actual.keys() == expected.keys() and actual
    for name, grad in expected.items():
        assert grad is not None and grad.abs().max() > 0, f"{name}: peft's gradient is zero"
        checks.assert_close(actual[name], grad, atol, f"gradient of {name}")
