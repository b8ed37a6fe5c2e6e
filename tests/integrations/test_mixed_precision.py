"""bf16/fp16 bases with fp32 adapters: the adapters stay fp32 (and get fp32 gradients) under autocast,
and the outputs equal peft's."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_llama

import peftkit
from peftkit import cast_mixed_precision_params

CONFIG = dict(target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_base_keeps_fp32_adapters_and_matches_peft(dtype):
    import peft

    base = tiny_llama().to(dtype)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**CONFIG))
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(**CONFIG))
    perturb_adapter_weights(theirs)
    ours.load_state_dict(theirs.state_dict())
    assert {p.dtype for n, p in ours.named_parameters() if "lora_" in n} == {torch.float32}
    inputs = llama_inputs()
    with torch.no_grad():
        got, expected = ours(**inputs).logits, theirs(**inputs).logits
    assert got.dtype == dtype
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_autocast_training_step_on_cast_model_updates_fp32_adapters():
    import peft

    base = tiny_llama()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**CONFIG))
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(**CONFIG))
    perturb_adapter_weights(theirs)
    ours.load_state_dict(theirs.state_dict())
    for model in (theirs, ours):
        (peft.cast_mixed_precision_params if model is theirs else cast_mixed_precision_params)(
            model, torch.bfloat16
        )
        model.train()
    inputs = llama_inputs(batch=4, length=8)
    losses = {}
    for name, model in (("theirs", theirs), ("ours", ours)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        losses[name] = loss.item()
    trainable = [p for p in ours.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in trainable)
    # bf16 compute: peftkit's fused LoRA update (one addmm) rounds once where peft rounds three times, so
    # the two agree to bf16 precision, not bitwise
    assert abs(losses["ours"] - losses["theirs"]) <= 1e-3 * abs(losses["theirs"])
    for (name, ours_param), (_, theirs_param) in zip(ours.named_parameters(), theirs.named_parameters()):
        if ours_param.requires_grad:
            scale = theirs_param.grad.abs().max().item()
            # a few bf16 roundings apart in forward and backward: within 2**-5 of the gradient's size
            torch.testing.assert_close(
                ours_param.grad, theirs_param.grad, atol=2**-5 * scale, rtol=0, msg=name
            )
