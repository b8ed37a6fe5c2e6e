"""Checks that a method's gradients, merged outputs and several-adapter handling equal peft's on identical
weights (1e-5 in fp32), to go with `method_checks`: peft's perturbed adapter is copied into peftkit's, then
both are differentiated, merged, switched or pruned the same way."""

from __future__ import annotations

import copy

import peft
import torch
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case, assert_close

import peftkit

ATOL = 1e-5  # fp32, identical weights: forward, gradients and merged outputs agree to this


def twin_models(method: str, case: Case, seed: int = 0):
    """peft's adapter (perturbed by `seed`) and peftkit's with the same tensors, both in eval mode."""
    base = case.model_fn()
    theirs = checks.peft_model(method, case, base, seed=seed)
    _, ours_config = checks._configs(method, case)
    ours = peftkit.get_peft_model(copy.deepcopy(base), ours_config).eval()
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not missing and not unexpected
    return base, theirs, ours


def _loss_gradients(model, case: Case, inputs: dict, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    (case.out_fn(model, inputs) * weights).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def check_gradients_equal_peft(method: str, case: Case, atol: float = ATOL) -> None:
    """The gradient of the same loss reaches the same tensors, with the same values, in both libraries."""
    _, theirs, ours = twin_models(method, case)
    inputs = case.inputs_fn()
    with torch.no_grad():
        shape = case.out_fn(ours, inputs).shape
    weights = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    expected = _loss_gradients(theirs, case, inputs, weights)
    actual = _loss_gradients(ours, case, inputs, weights)
    assert actual.keys() == expected.keys()
    assert any(g.abs().max() > 0 for g in expected.values()), "the loss must reach the adapter"
    for name, grad in expected.items():
        assert_close(actual[name], grad, atol, f"gradient of {name}")


def check_merged_equals_peft(method: str, case: Case, atol: float = ATOL) -> None:
    """Merged, unmerged-again and merge_and_unload outputs equal peft's."""
    _, theirs, ours = twin_models(method, case)
    inputs = case.inputs_fn()
    with torch.no_grad():
        for model in (theirs, ours):
            model.merge_adapter()
        assert_close(case.out_fn(ours, inputs), case.out_fn(theirs, inputs), atol, "merged forward")
        for model in (theirs, ours):
            model.unmerge_adapter()
        assert_close(case.out_fn(ours, inputs), case.out_fn(theirs, inputs), atol, "unmerged forward")
        theirs_merged = theirs.merge_and_unload()
        ours_merged = ours.merge_and_unload()
        assert_close(
            case.out_fn(ours_merged, inputs), case.out_fn(theirs_merged, inputs), atol, "merge_and_unload"
        )


def _two_adapter_model(lib, method: str, case: Case, base):
    config = getattr(lib, method)(task_type=case.task_type, **copy.deepcopy(case.config))
    model = lib.get_peft_model(copy.deepcopy(base), config)
    model.add_adapter("second", copy.deepcopy(config))
    return model.eval()


def check_several_adapters_equal_peft(method: str, case: Case, atol: float = ATOL) -> None:
    """Two adapters in one model: set_adapter picks the same one, delete_adapter leaves the same tensors
    and outputs as in peft (the deleted adapter's state is gone from every layer)."""
    base = case.model_fn()
    theirs = _two_adapter_model(peft, method, case, base)
    checks.perturb_adapter_weights(theirs)
    theirs.set_adapter("second")
    checks.perturb_adapter_weights(theirs, seed=1)
    ours = _two_adapter_model(peftkit, method, case, base)
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not missing and not unexpected
    inputs = case.inputs_fn()
    with torch.no_grad():
        for name in ("default", "second"):
            theirs.set_adapter(name)
            ours.set_adapter(name)
            assert_close(case.out_fn(ours, inputs), case.out_fn(theirs, inputs), atol, f"adapter {name}")
        for model in (theirs, ours):
            model.delete_adapter("default")
        assert ours.active_adapters == theirs.active_adapters == ["second"]
        assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
        assert_close(case.out_fn(ours, inputs), case.out_fn(theirs, inputs), atol, "after delete_adapter")
    layers = [m for m in ours.modules() if isinstance(m, peftkit.tuners.tuners_utils.BaseTunerLayer)]
    assert layers and all(m._all_available_adapter_names() == ["second"] for m in layers)
