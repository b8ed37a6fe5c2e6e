"""What the method checks run on: a `Case`, the two libraries' models built from it, and the tolerances.

A `Case` names a tiny base model, the config kwargs (valid for both libraries' config class of the
method), the inputs and how to read the output. The models are moved away from their identity
initialisation with a seeded perturbation, so that a check compares adapters that do something.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import peft
import torch
from tests.conftest import conv_net, llama_inputs, perturb_adapter_weights

import peftkit

ROUNDTRIP_ATOL = 1e-5  # an adapter moved between the libraries gives the same logits (the brief's bound)
MERGE_ATOL = 1e-4  # merged vs unmerged forward: the weight is rounded once more
BASE_ATOL = 1e-5  # disabled / unmerged / unloaded vs the untouched base model
NUMERIC_ATOL = 1e-5  # identical weights in both libraries, fp32: forward, gradients and merged outputs
MERGED_WEIGHT_ATOL = 1e-6  # the same change merged into the same fp32 weight


def llama_logits(model, inputs):
    return model(**inputs).logits


def conv_output(model, inputs):
    return model(inputs["input_ids"])


def conv_inputs():
    return {"input_ids": torch.randint(0, 20, (3, 8), generator=torch.Generator().manual_seed(3))}


@dataclass
class Case:
    """A base model, the method's config kwargs, its inputs, and how to read its output."""

    model_fn: Callable[[], torch.nn.Module]
    config: dict
    inputs_fn: Callable[[], dict] = llama_inputs
    out_fn: Callable = llama_logits
    task_type: str | None = None
    peft_only: dict = field(default_factory=dict)  # kwargs only the peft config gets (none so far)


def conv_case(config: dict) -> Case:
    return Case(conv_net, config, conv_inputs, conv_output)


def config_pair(method: str, case: Case):
    """(peft's config, peftkit's config) of class `method` for the case."""
    theirs = getattr(peft, method)(task_type=case.task_type, **copy.deepcopy(case.config), **case.peft_only)
    ours = getattr(peftkit, method)(task_type=case.task_type, **copy.deepcopy(case.config))
    return theirs, ours


def peft_model(method: str, case: Case, base: torch.nn.Module, seed: int = 0):
    """peft's adapter on a copy of `base`, perturbed by `seed`, in eval mode."""
    theirs, _ = config_pair(method, case)
    model = peft.get_peft_model(copy.deepcopy(base), theirs)
    perturb_adapter_weights(model, seed=seed)
    return model.eval()


def peftkit_model(method: str, case: Case, base: torch.nn.Module, seed: int = 0):
    """peftkit's adapter on a copy of `base`, perturbed by `seed`, in eval mode."""
    _, ours = config_pair(method, case)
    model = peftkit.get_peft_model(copy.deepcopy(base), ours)
    perturb_adapter_weights(model, seed=seed)
    return model.eval()


def paired(method: str, case: Case, seed: int = 0, second: dict | None = None, base=None):
    """(base, theirs, ours) in eval mode with the very same adapter weights: peft's, perturbed by `seed`,
    copied into peftkit's, so every difference after that is a difference of the computation.

    `second`: config kwargs of a second adapter "other", added to both and made active beside "default".
    `base`: the base model (default: the case's)."""
    base = case.model_fn() if base is None else base
    theirs_config, ours_config = config_pair(method, case)
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
    return base, theirs.eval(), ours.eval()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str) -> None:
    diff = (actual - expected).abs().max().item()
    assert diff <= atol, f"{what}: max abs difference {diff:.3g} > {atol}"
