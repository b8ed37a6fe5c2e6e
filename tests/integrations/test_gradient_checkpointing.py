"""Gradient checkpointing with a frozen base: the adapters get the gradients they get without it, with
reentrant and non-reentrant checkpointing, enabled through the PeftModel (attribute fall-through) or by
the Trainer."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_llama
from tests.integrations.trainer_helpers import TokenDataset, lora_tensors, max_abs_diff, training_args

import peftkit
from peftkit.integrations.transformers import PeftTrainer

CONFIG = dict(target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")


def _grads(model) -> dict[str, torch.Tensor]:
    model.train()
    inputs = llama_inputs(batch=3, length=6)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_checkpointed_gradients_equal_plain_gradients(reentrant):
    model = peftkit.get_peft_model(tiny_llama(), peftkit.LoraConfig(**CONFIG))
    perturb_adapter_weights(model)  # lora_B != 0, so lora_A gets a gradient too
    checkpointed = copy.deepcopy(model)
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    assert checkpointed.get_base_model().model.gradient_checkpointing
    expected, got = _grads(model), _grads(checkpointed)
    assert got.keys() == expected.keys() == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in got)
    assert max_abs_diff(got, expected) <= 1e-6


def test_trainer_with_gradient_checkpointing_trains_the_adapter(tmp_path):
    model = peftkit.get_peft_model(tiny_llama(), peftkit.LoraConfig(**CONFIG))
    before = lora_tensors(model)
    args = training_args(
        tmp_path,
        max_steps=2,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": True},
    )
    PeftTrainer(model=model, args=args, train_dataset=TokenDataset()).train()
    assert model.get_base_model().model.gradient_checkpointing
    after = lora_tensors(model)
    moved = [n for n in before if "lora_B" in n and (after[n] - before[n]).abs().max() > 0]
    assert len(moved) == len([n for n in before if "lora_B" in n])
