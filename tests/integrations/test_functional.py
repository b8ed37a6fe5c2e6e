"""peftkit.functional (peft.functional under the alias) on a model adapted in place, against peft's."""

from __future__ import annotations

import copy

import torch
from tests.conftest import tiny_llama

import peftkit
import peftkit.functional as ours_fn


def _pair():
    import peft

    base = tiny_llama().to(torch.bfloat16)
    theirs, ours = copy.deepcopy(base), copy.deepcopy(base)
    for name, targets in (("a", ["q_proj"]), ("b", ["q_proj", "v_proj"])):
        peft.inject_adapter_in_model(peft.LoraConfig(target_modules=targets), theirs, name)
        peftkit.inject_adapter_in_model(peftkit.LoraConfig(target_modules=targets), ours, name)
    return theirs, ours


def _grads(model):
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def _dtypes(model):
    return {n: p.dtype for n, p in model.named_parameters() if "lora_" in n}


def test_set_adapter_set_requires_grad_cast_and_delete_as_peft():
    import peft.functional as theirs_fn

    with torch.no_grad():
        theirs, ours = _pair()
    for fn, model in ((theirs_fn, theirs), (ours_fn, ours)):
        fn.set_adapter(model, "a")
    assert _grads(ours) == _grads(theirs) and _grads(ours)
    for fn, model in ((theirs_fn, theirs), (ours_fn, ours)):
        fn.set_requires_grad(model, ["b"], requires_grad=True)
        fn.set_requires_grad(model, "a", requires_grad=False)
    assert _grads(ours) == _grads(theirs) and all(".b." in n for n in _grads(ours))

    # injected without the wrapper, adapters keep the bf16 base's dtype (as in peft)
    assert _dtypes(ours) == _dtypes(theirs) and set(_dtypes(ours).values()) == {torch.bfloat16}
    for fn, model in ((theirs_fn, theirs), (ours_fn, ours)):
        fn.cast_adapter_dtype(model, "a")
    assert _dtypes(ours) == _dtypes(theirs)
    assert {d for n, d in _dtypes(ours).items() if ".a." in n} == {torch.float32}

    for fn, model in ((theirs_fn, theirs), (ours_fn, ours)):
        fn.set_adapter(model, "b")
    assert ours_fn.delete_adapter(ours, "a", prefix="lora_") == theirs_fn.delete_adapter(
        theirs, "a", prefix="lora_"
    )
    assert not [n for n, _ in ours.named_parameters() if ".a." in n]
    assert sorted(n for n, _ in ours.named_parameters()) == sorted(n for n, _ in theirs.named_parameters())
