"""prepare_model_for_kbit_training and cast_mixed_precision_params, checked against peft's on the same
models, then QLoRA training with gradient checkpointing (reentrant and not)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from tests.conftest import llama_inputs, tiny_llama
from tests.quantization.helpers import quantizable_llama, quantize_linears

import peftkit
from peftkit import cast_mixed_precision_params, prepare_model_for_kbit_training


def _param_states(model) -> dict[str, tuple[torch.dtype, bool]]:
    return {n: (p.dtype, p.requires_grad) for n, p in model.named_parameters()}


def _checkpointing(model) -> tuple[bool, dict]:
    """Whether the decoder checkpoints its layers, and the keywords its checkpoint function is bound to."""
    inner = model.model
    func = getattr(inner, "_gradient_checkpointing_func", None)
    return bool(getattr(inner, "gradient_checkpointing", False)), dict(getattr(func, "keywords", {}) or {})


MODELS = {
    "4bit-fp16": lambda: quantize_linears(quantizable_llama().to(torch.float16), bits=4),
    "4bit-bf16": lambda: quantize_linears(quantizable_llama().to(torch.bfloat16), bits=4),
    "8bit-bf16": lambda: quantize_linears(quantizable_llama().to(torch.bfloat16), bits=8),
    "unquantized-fp16": lambda: tiny_llama().to(torch.float16),
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_prepare_casts_freezes_and_checkpoints_as_peft(kind):
    import peft

    ours_model = MODELS[kind]()
    theirs_model = copy.deepcopy(ours_model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.prepare_model_for_kbit_training(theirs_model)
    ours = prepare_model_for_kbit_training(ours_model)
    assert ours is ours_model
    assert _param_states(ours) == _param_states(theirs)
    assert not any(p.requires_grad for p in ours.parameters())
    enabled, _ = _checkpointing(ours)
    assert enabled == _checkpointing(theirs)[0] == kind.startswith(("4bit", "8bit"))
    assert bool(getattr(ours, "_require_grads_hooks", None)) == bool(
        getattr(theirs, "_require_grads_hooks", None)
    )


def test_prepare_passes_use_reentrant_explicitly():
    model = prepare_model_for_kbit_training(MODELS["4bit-bf16"]())
    assert _checkpointing(model) == (
        True,
        {"use_reentrant": True},
    )  # peft leaves it to torch's default (True)
    model = prepare_model_for_kbit_training(
        MODELS["4bit-bf16"](), gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    assert _checkpointing(model) == (True, {"use_reentrant": False})
    model = prepare_model_for_kbit_training(MODELS["4bit-bf16"](), use_gradient_checkpointing=False)
    assert _checkpointing(model) == (False, {})


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_qlora_trains_with_gradient_checkpointing(reentrant):
    model = prepare_model_for_kbit_training(
        quantize_linears(quantizable_llama().to(torch.bfloat16), bits=4, compute_dtype=torch.float32),
        gradient_checkpointing_kwargs={"use_reentrant": reentrant},
    )
    model = peftkit.get_peft_model(
        model, peftkit.LoraConfig(target_modules=["q_proj", "v_proj", "gate_proj"], task_type="CAUSAL_LM")
    )
    model.train()
    inputs = llama_inputs(batch=4, length=8)
    labels = inputs["input_ids"].clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error", UserWarning
        )  # e.g. torch's "use_reentrant should be passed explicitly"
        for _ in range(5):
            optimizer.zero_grad()
            loss = model(**inputs, labels=labels).loss
            loss.backward()
            with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
            assert with_grad == {n for n, p in model.named_parameters() if p.requires_grad}
            assert all("lora_" in n for n in with_grad)
            optimizer.step()
            losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3, losses


def test_cast_mixed_precision_params_as_peft_and_leaves_quantized_weights():
    import peft

    base = tiny_llama()
    config = dict(target_modules=["q_proj", "v_proj"])
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**config))
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(**config))
    peft.cast_mixed_precision_params(theirs, torch.bfloat16)
    cast_mixed_precision_params(ours, torch.bfloat16)
    assert _param_states(ours) == _param_states(theirs)
    assert {p.dtype for p in ours.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in ours.parameters() if not p.requires_grad} == {torch.bfloat16}

    quantized = peftkit.get_peft_model(
        quantize_linears(quantizable_llama(), bits=4), peftkit.LoraConfig(**config)
    )
    cast_mixed_precision_params(quantized, torch.bfloat16)
    packed = quantized.base_model.model.model.layers[0].self_attn.k_proj.weight
    assert packed.dtype == torch.uint8 and type(packed).__name__ == "Params4bit"
