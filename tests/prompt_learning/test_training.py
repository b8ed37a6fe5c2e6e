"""A few optimisation steps on a tiny model lower the loss, and only the adapter learns."""

import pytest
import torch
from tests.conftest import llama_inputs, tiny_llama, tiny_llama_seq_cls

CONFIGS = {
    "prompt_tuning": ("PromptTuningConfig", {}),
    "prefix_tuning": ("PrefixTuningConfig", {}),
    "prefix_projection": ("PrefixTuningConfig", {"prefix_projection": True, "encoder_hidden_size": 16}),
    "ptuning": ("PromptEncoderConfig", {"encoder_hidden_size": 16}),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_causal_lm_training_lowers_the_loss(name):
    import peftkit

    config_name, extra = CONFIGS[name]
    torch.manual_seed(0)
    base = tiny_llama()
    frozen_before = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = peftkit.get_peft_model(
        base, getattr(peftkit, config_name)(task_type="CAUSAL_LM", num_virtual_tokens=4, **extra)
    )
    model.train()
    inputs = llama_inputs(batch=2, length=8)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.3)
    losses = []
    for _ in range(8):
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in base.parameters())  # the base model gets no gradient
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    assert all(torch.equal(p, frozen_before[n]) for n, p in base.named_parameters())


def test_sequence_classification_training_lowers_the_loss():
    import peftkit

    torch.manual_seed(0)
    model = peftkit.get_peft_model(
        tiny_llama_seq_cls(), peftkit.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)
    )
    model.train()
    inputs = llama_inputs(batch=4, length=6)
    labels = torch.tensor([0, 1, 2, 1])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    losses = []
    for _ in range(8):
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    original = model.base_model.score.original_module.weight
    assert original.grad is None and not original.requires_grad
