"""Checks on a peft model and a peftkit model that hold the very same adapter weights.

`paired` builds the adapter in both libraries on one base model, perturbs peft's (seeded) and copies its
state dict into peftkit's, so every difference after that is a difference of the computation: forward,
gradients, merging. Tolerances are stated where they are used.
"""

from __future__ import annotations

import copy
import os

import peft
import pytest
import torch
from tests.conftest import perturb_adapter_weights
from tests.tuners.method_checks import Case, _configs, assert_close

import peftkit
from peftkit.utils.warnings import AdapterLoadError

NUMERIC_ATOL = 1e-5  # fp32 forward, gradients and merged outputs (the brief's bound)


def paired(method: str, case: Case, seed: int = 0, second: dict | None = None):
    """(base, theirs, ours) with identical adapter weights; `second`: config kwargs of a second adapter
    "other" added to both and made active beside "default"."""
    base = case.model_fn()
    theirs_config, ours_config = _configs(method, case)
    theirs = peft.get_peft_model(copy.deepcopy(base), theirs_config)
    ours = peftkit.get_peft_model(copy.deepcopy(base), ours_config)
    if second is not None:
        theirs.add_adapter("other", getattr(peft, method)(**second))
        ours.add_adapter("other", getattr(peftkit, method)(**second))
        for model in (theirs, ours):
            model.base_model.set_adapter(["default", "other"])
    perturb_adapter_weights(theirs, seed=seed)
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not missing and not unexpected
    return base, theirs, ours


def _loss_and_grads(model, case: Case, inputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    out = case.out_fn(model, inputs)
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)  # a loss that sees every output
    (out * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return out.detach(), grads


def check_forward_backward_equal_peft(method: str, case: Case, second: dict | None = None) -> None:
    """Same outputs and same gradients of every trainable tensor (train mode, no dropout in the cases)."""
    _, theirs, ours = paired(method, case, second=second)
    inputs = case.inputs_fn()
    expected, expected_grads = _loss_and_grads(theirs.train(), case, inputs)
    actual, actual_grads = _loss_and_grads(ours.train(), case, inputs)
    assert_close(actual, expected, NUMERIC_ATOL, "forward")
    assert expected_grads and actual_grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        assert grad.abs().max() > 0, f"{name}: peft's gradient is zero, the check would prove nothing"
        assert_close(actual_grads[name], grad, NUMERIC_ATOL, f"gradient of {name}")


def check_merged_equal_peft(method: str, case: Case, second: dict | None = None) -> None:
    """merge_adapter and merge_and_unload give peft's outputs."""
    base, theirs, ours = paired(method, case, second=second)
    inputs = case.inputs_fn()
    with torch.no_grad():
        unmerged = case.out_fn(theirs.eval(), inputs)
        assert (unmerged - case.out_fn(base, inputs)).abs().max() > 1e-3
        merged_theirs = copy.deepcopy(theirs).merge_and_unload()
        merged_ours = copy.deepcopy(ours.eval()).merge_and_unload()
        expected = case.out_fn(merged_theirs, inputs)
        assert_close(case.out_fn(merged_ours, inputs), expected, NUMERIC_ATOL, "merge_and_unload")
        theirs.merge_adapter()
        ours.merge_adapter()
        assert_close(case.out_fn(ours, inputs), case.out_fn(theirs, inputs), NUMERIC_ATOL, "merged forward")


def check_truncated_file_is_a_clear_error(method: str, case: Case, folder: str) -> None:
    """A weights file cut short (an interrupted download) fails to load with an error naming the file."""
    base = case.model_fn()
    _, config = _configs(method, case)
    peftkit.get_peft_model(copy.deepcopy(base), config).save_pretrained(folder)
    path = os.path.join(folder, "adapter_model.safetensors")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(AdapterLoadError, match="truncated or corrupt"):
        peftkit.PeftModel.from_pretrained(copy.deepcopy(base), folder)
