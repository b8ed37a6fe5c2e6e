"""peft's LoRA helpers: `create_riemannian_optimizer`, `DoraCaching`, `KappaTuneSelector` /
`find_kappa_target_modules`, each against peft 0.21.2 on the same model."""

from __future__ import annotations

import copy

import peft
import peft.helpers
import peft.optimizers
import pytest
import torch
from tests.conftest import llama_inputs, tiny_llama
from torch import nn

import peftkit
import peftkit.helpers
from peftkit.optimizers import create_riemannian_optimizer
from peftkit.tuners.lora import dora

STEP_ATOL = 1e-6  # fp32, the same gradients and preconditioners: parameters after a few steps


def _lora_pair(**config):
    base = tiny_llama()
    kwargs = dict(target_modules=["q_proj", "v_proj", "embed_tokens"], init_lora_weights=False) | config
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kwargs))
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(**kwargs))
    peftkit.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs))
    return theirs, ours


def _train(model, optimizer, steps: int = 3) -> list[float]:
    inputs = llama_inputs()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# ----- Riemannian-preconditioned LoRA -----
@pytest.mark.parametrize("optimizer_cls", [torch.optim.AdamW, torch.optim.SGD])
def test_riemannian_steps_equal_peft(optimizer_cls):
    theirs, ours = _lora_pair()
    their_opt = peft.optimizers.create_riemannian_optimizer(theirs, optimizer_cls, lr=1e-2, reg=1e-3)
    our_opt = create_riemannian_optimizer(ours, optimizer_cls, lr=1e-2, reg=1e-3)
    assert isinstance(our_opt, optimizer_cls)
    their_losses, our_losses = _train(theirs, their_opt), _train(ours, our_opt)
    assert our_losses[-1] < our_losses[0]
    assert our_losses == pytest.approx(their_losses, abs=1e-6)
    theirs_params = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        if param.requires_grad:
            assert torch.allclose(param, theirs_params[name], atol=STEP_ATOL), name


def test_riemannian_preconditioner_is_the_paper_s_formula():
    _, ours = _lora_pair()
    optimizer = create_riemannian_optimizer(ours, torch.optim.SGD, lr=1.0, reg=0.1)
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    embedding_A = ours.base_model.model.model.embed_tokens.lora_embedding_A["default"]
    inputs = llama_inputs()
    ours(**inputs, labels=inputs["input_ids"]).loss.backward()
    eye = torch.eye(A.shape[0])
    expected_A = A - torch.linalg.inv(B.T @ B + 0.1 * eye) @ A.grad
    expected_B = B - B.grad @ torch.linalg.inv(A @ A.T + 0.1 * eye)
    expected_embedding = embedding_A - embedding_A.grad  # not a lora_A/lora_B pair: plain SGD
    expected = [t.detach().clone() for t in (expected_A, expected_B, expected_embedding)]
    optimizer.step()
    for got, want in zip((A, B, embedding_A), expected):
        assert torch.allclose(got, want, atol=1e-5)


def test_riemannian_refuses_what_it_cannot_precondition():
    _, ours = _lora_pair()
    with pytest.raises(ValueError, match="requires a closure"):
        create_riemannian_optimizer(ours, torch.optim.LBFGS, lr=1.0)
    with pytest.raises(TypeError, match="subclass of torch.optim.Optimizer"):
        create_riemannian_optimizer(ours, object, lr=1.0)
    loha = peftkit.get_peft_model(tiny_llama(), peftkit.LoHaConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="did not find any trainable lora_A/lora_B"):
        create_riemannian_optimizer(loha, torch.optim.AdamW, lr=1.0)
    optimizer = create_riemannian_optimizer(ours, torch.optim.AdamW, lr=1.0)
    with pytest.raises(ValueError, match="does not support closures"):
        optimizer.step(lambda: 0.0)


# ----- DoRA caching -----
def _dora_pair():
    theirs, ours = _lora_pair(target_modules=["q_proj", "v_proj"], use_dora=True)
    return theirs.eval(), ours.eval()


def test_dora_caching_gives_peft_s_outputs_and_computes_the_norm_once(monkeypatch):
    theirs, ours = _dora_pair()
    inputs = llama_inputs()
    with torch.no_grad():
        expected = theirs(**inputs).logits
        with peft.helpers.DoraCaching():
            assert torch.allclose(theirs(**inputs).logits, expected, atol=1e-6)
    calls = []
    original = dora.DoraVariant.weight_norm
    monkeypatch.setattr(dora.DoraVariant, "weight_norm", lambda *a, **k: calls.append(1) or original(*a, **k))
    with torch.no_grad(), peftkit.helpers.DoraCaching():
        first = ours(**inputs).logits
        counted = len(calls)
        second = ours(**inputs).logits
    assert counted == 4  # two layers per decoder layer, two decoder layers
    assert len(calls) == counted  # the second forward read the cache
    assert torch.allclose(first, expected, atol=1e-5) and torch.equal(first, second)
    with torch.no_grad():
        ours(**inputs)
    assert len(calls) == 2 * counted  # caching is off again outside the block


def test_dora_cache_follows_weight_changes_and_training_mode():
    _, ours = _dora_pair()
    inputs = llama_inputs()
    caching = peftkit.helpers.DoraCaching()
    caching(enabled=True)
    try:
        with torch.no_grad():
            ours(**inputs)
            layer = ours.base_model.model.model.layers[0].self_attn.q_proj
            layer.lora_B["default"].weight.mul_(3.0)  # in place: the cached norm is stale now
            cached = ours(**inputs).logits
        assert dora.ENABLE_DORA_CACHING is True
        caching(enabled=False)
        with torch.no_grad():
            assert torch.equal(cached, ours(**inputs).logits)
        caching(enabled=True)
        ours.train()
        ours(**inputs).logits.sum().backward()  # training: no cache, the magnitude still gets its gradient
        assert layer.lora_magnitude_vector["default"].weight.grad is not None
        assert layer.lora_variant["default"]._cached_norm is None
    finally:
        caching(enabled=False)
    with peftkit.helpers.DoraCaching(enabled=False):
        assert dora.ENABLE_DORA_CACHING is False


# ----- KappaTune -----
class _MoE(nn.Module):
    """A tiny model with linear layers and fused expert weights (3-D parameters)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        self.proj = nn.ModuleList(nn.Linear(8, 8) for _ in range(5))
        self.experts = nn.Module()
        self.experts.gate_up_proj = nn.Parameter(torch.randn(3, 8, 12, generator=gen))
        self.experts.down_proj = nn.Parameter(torch.randn(3, 6, 8, generator=gen))
        self.big = nn.Linear(8, 40)
        self.other = nn.Parameter(torch.randn(2, 4, 4, generator=gen))  # 3-D but not an expert weight


@pytest.mark.parametrize(
    "choice", [dict(top_p=0.4), dict(num_modules=3), dict(threshold=5.0), dict()], ids=lambda c: str(c)
)
def test_kappa_selection_equals_peft(choice):
    model = _MoE()
    theirs = peft.helpers.KappaTuneSelector(model, max_dim_size_to_analyze=32, show_progress=False)
    ours = peftkit.helpers.KappaTuneSelector(model, max_dim_size_to_analyze=32, show_progress=False)
    assert ours.get_best_targets(**choice) == theirs.get_best_targets(**choice)
    assert ours.get_best_target_parameters(**choice) == theirs.get_best_target_parameters(**choice)
    assert "big" not in ours.get_best_targets()  # 40 > max_dim_size_to_analyze
    assert ours._condition_numbers == pytest.approx(theirs._condition_numbers, rel=1e-6)


def test_find_kappa_target_modules_equals_peft_and_builds_a_config():
    llama = tiny_llama()
    kwargs = dict(top_p=0.3, show_progress=False)
    ours = peftkit.find_kappa_target_modules(llama, **kwargs)
    assert ours == peft.find_kappa_target_modules(llama, **kwargs)
    assert ours["target_parameters"] is None and len(ours["target_modules"]) == int(15 * 0.3)
    model = peftkit.get_peft_model(llama, peftkit.LoraConfig(**ours))
    assert len(model.base_model.targeted_module_names) == len(ours["target_modules"])
    moe_model = _MoE()
    moe = peftkit.find_kappa_target_modules(moe_model, top_p=0.5, show_progress=False)
    assert moe == peft.find_kappa_target_modules(moe_model, top_p=0.5, show_progress=False)
    assert len(moe["target_parameters"]) == 1 and moe["target_parameters"][0].startswith("experts.")
