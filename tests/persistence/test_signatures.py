"""The persistence API has peft 0.21's signatures: same parameter names, order, kinds and defaults.

A trailing `**kwargs` or keyword-only extras of ours may follow peft's parameters (documented extensions).
"""

from __future__ import annotations

import inspect

import peft
import peft.auto
import peft.helpers
import pytest

import peftkit
import peftkit.auto
import peftkit.helpers

PAIRS = {
    "PeftModel.save_pretrained": (peftkit.PeftModel.save_pretrained, peft.PeftModel.save_pretrained),
    "PeftModel.from_pretrained": (peftkit.PeftModel.from_pretrained, peft.PeftModel.from_pretrained),
    "PeftModel.load_adapter": (peftkit.PeftModel.load_adapter, peft.PeftModel.load_adapter),
    "PeftModel.push_to_hub": (peftkit.PeftModel.push_to_hub, peft.PeftModel.push_to_hub),
    "PeftConfig.from_pretrained": (peftkit.PeftConfig.from_pretrained, peft.PeftConfig.from_pretrained),
    "get_peft_model_state_dict": (peftkit.get_peft_model_state_dict, peft.get_peft_model_state_dict),
    "set_peft_model_state_dict": (peftkit.set_peft_model_state_dict, peft.set_peft_model_state_dict),
    "load_peft_weights": (peftkit.load_peft_weights, peft.load_peft_weights),
    "check_if_peft_model": (peftkit.helpers.check_if_peft_model, peft.helpers.check_if_peft_model),
    "AutoPeftModel.from_pretrained": (
        peftkit.auto.AutoPeftModel.from_pretrained,
        peft.auto.AutoPeftModel.from_pretrained,
    ),
}


def _shape(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_signature_matches_peft(name):
    ours, theirs = (_shape(f) for f in PAIRS[name])
    assert ours[: len(theirs)] == theirs
    extensions = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    assert all(kind in extensions for _, kind, _ in ours[len(theirs) :])


@pytest.mark.parametrize("name", sorted(n for n in dir(peft.auto) if n.startswith("AutoPeftModel")))
def test_every_auto_class_exists_and_is_exported(name):
    assert getattr(peftkit.auto, name) is getattr(peftkit, name)
    assert name in peftkit.__all__
