"""LoRA-GA (`init_lora_weights="lora_ga"`, `preprocess_loraga`): peft's gradients, factors and residual
base weights; files both ways; the cache file; conversion to plain LoRA."""

import copy
import dataclasses
import functools

import pytest
import torch
from tests.conftest import llama_inputs, tiny_gpt2, tiny_llama
from tests.lora_family.helpers import max_diff, train_steps

import peftkit

ATOL = 1e-5
TARGETS = ["q_proj", "v_proj", "down_proj"]


def _train_step(model, batches=2):
    def step():
        for seed in range(batches):
            model(**llama_inputs(seed=seed)).logits.pow(2).mean().backward()

    return step


def _seeded(function):
    """`function` re-seeding torch's generator at each call: both libraries draw the same randomized SVD."""

    @functools.wraps(function)
    def seeded(*args, **kwargs):
        torch.manual_seed(1234)
        return function(*args, **kwargs)

    return seeded


def _pair(base, monkeypatch, **ga):
    import peft

    monkeypatch.setattr(torch, "svd_lowrank", _seeded(torch.svd_lowrank))
    models = []
    for lib in (peft, peftkit):
        model = copy.deepcopy(base)
        config = lib.LoraConfig(
            r=4, target_modules=TARGETS, init_lora_weights="lora_ga", lora_ga_config=lib.LoraGAConfig(**ga)
        )
        lib.preprocess_loraga(model, config, _train_step(model))
        models.append(lib.get_peft_model(model, config))
    return models


def test_config_fields_and_defaults_are_peft_s():
    from peft.tuners.lora.config import LoraGAConfig as Theirs

    def defaults(cls):
        return {f.name: f.default for f in dataclasses.fields(cls)}

    assert defaults(peftkit.LoraGAConfig) == defaults(Theirs)


def test_estimated_gradients_equal_peft_s():
    import peft

    base = tiny_llama()
    grads = []
    for lib in (peft, peftkit):
        model = copy.deepcopy(base)
        config = lib.LoraConfig(
            target_modules=TARGETS, init_lora_weights="lora_ga", lora_ga_config=lib.LoraGAConfig()
        )
        lib.preprocess_loraga(model, config, _train_step(model))
        grads.append(
            {n: m._peft_loraga_grad for n, m in model.named_modules() if hasattr(m, "_peft_loraga_grad")}
        )
        assert all(p.requires_grad for p in model.parameters())  # as they were before
        assert all(p.grad is None for p in model.parameters())
    theirs, ours = grads
    assert sorted(ours) == sorted(theirs) and len(ours) == 6
    assert max(max_diff(ours[k], theirs[k]) for k in ours) < 1e-6
    full = copy.deepcopy(base)
    _train_step(full, batches=2)()
    weight = full.model.layers[1].mlp.down_proj.weight.grad / 2  # the mean over the two backward passes
    assert max_diff(ours["model.layers.1.mlp.down_proj"], weight) < 1e-6


@pytest.mark.parametrize(
    "direction, scale",
    [("ArB2r", "stable"), ("A2rBr", "weight_svd"), ("ArBr", "gd_scale"), ("random", "unit")],
)
def test_factors_and_residual_weights_equal_peft_s(monkeypatch, direction, scale):
    base = tiny_llama()
    inputs = llama_inputs()
    theirs, ours = _pair(base, monkeypatch, direction=direction, scale=scale)
    their_state = theirs.state_dict()
    assert max(max_diff(v, their_state[k]) for k, v in ours.state_dict().items()) < ATOL
    q_proj = ours.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.lora_B["default"].weight.abs().sum() > 0  # both factors start non-zero ...
    assert max_diff(ours(**inputs).logits, base(**inputs).logits) < ATOL  # ... on W - s B A: no change
    assert not any(hasattr(m, "_peft_loraga_grad") for m in ours.modules())  # consumed


def test_files_both_ways_and_conversion_to_plain_lora(tmp_path, monkeypatch):
    import peft

    base = tiny_llama()
    inputs = llama_inputs()
    _, ours = _pair(base, monkeypatch)
    ours.save_pretrained(tmp_path / "init")
    train_steps(ours, inputs)
    trained = ours(**inputs).logits
    ours.save_pretrained(tmp_path / "trained")
    # loaded onto the original base (no gradient there), the factors come from the file and the base stays
    for lib in (peft, peftkit):
        loaded = lib.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "trained")
        state = loaded.state_dict()
        assert (
            max_diff(
                state["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"],
                base.model.layers[0].self_attn.q_proj.weight,
            )
            == 0
        )
    ours.save_pretrained(tmp_path / "plain", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    converted = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "plain")
    assert max_diff(converted(**inputs).logits, trained) < 1e-4
    assert peftkit.LoraConfig.from_pretrained(tmp_path / "plain").r == 8


def test_gradient_cache_is_written_atomically_and_read_by_both(tmp_path):
    import peft

    base = tiny_llama()
    cache = tmp_path / "cache" / "grads.pt"
    model = copy.deepcopy(base)
    config = peftkit.LoraConfig(
        target_modules=TARGETS, init_lora_weights="lora_ga", lora_ga_config=peftkit.LoraGAConfig()
    )
    peftkit.preprocess_loraga(model, config, _train_step(model), cache_file=str(cache))
    assert sorted(p.name for p in cache.parent.iterdir()) == ["grads.pt"]  # no temporary file left
    expected = {n: m._peft_loraga_grad for n, m in model.named_modules() if hasattr(m, "_peft_loraga_grad")}

    def never():
        raise AssertionError("a cached gradient must not run train_step")

    for lib in (peft, peftkit):
        again = copy.deepcopy(base)
        config = lib.LoraConfig(
            target_modules=TARGETS, init_lora_weights="lora_ga", lora_ga_config=lib.LoraGAConfig()
        )
        lib.preprocess_loraga(again, config, never, cache_file=str(cache))
        got = {n: m._peft_loraga_grad for n, m in again.named_modules() if hasattr(m, "_peft_loraga_grad")}
        assert sorted(got) == sorted(expected) and all(torch.equal(got[k], v) for k, v in expected.items())
    other = peftkit.LoraConfig(
        target_modules=["k_proj"], init_lora_weights="lora_ga", lora_ga_config=peftkit.LoraGAConfig()
    )
    with pytest.raises(ValueError, match="has no gradient for"):
        peftkit.preprocess_loraga(copy.deepcopy(base), other, never, cache_file=str(cache))


def test_defaults_all_linear_conv1d_and_clear_errors(monkeypatch):
    import peft

    gpt2 = tiny_gpt2()
    ids = torch.tensor([[1, 2, 3, 4]])

    def gpt2_step(model):  # GPT-2 trains with dropout: the same draws in both libraries
        torch.manual_seed(0)
        model(input_ids=ids).logits.sum().backward()

    monkeypatch.setattr(torch, "svd_lowrank", _seeded(torch.svd_lowrank))
    models = []
    for lib in (peft, peftkit):  # default targets (GPT-2: c_attn, a Conv1D storing (in, out))
        model = copy.deepcopy(gpt2)
        config = lib.LoraConfig(r=2, init_lora_weights="lora_ga", lora_ga_config=lib.LoraGAConfig())
        lib.preprocess_loraga(model, config, functools.partial(gpt2_step, model))
        models.append(lib.get_peft_model(model, config))
    assert max(max_diff(v, models[0].state_dict()[k]) for k, v in models[1].state_dict().items()) < ATOL
    assert max_diff(models[1](input_ids=ids).logits, gpt2(input_ids=ids).logits) < ATOL
    linear = peftkit.LoraConfig(target_modules="all-linear", init_lora_weights="lora_ga", lora_ga_config={})
    model = tiny_llama()
    peftkit.preprocess_loraga(model, linear, _train_step(model))
    assert sum(hasattr(m, "_peft_loraga_grad") for m in model.modules()) == 14  # 7 per layer, not lm_head
    with pytest.raises(ValueError, match="lora_ga_config=LoraGAConfig"):
        peftkit.preprocess_loraga(tiny_llama(), peftkit.LoraConfig(init_lora_weights="lora_ga"), lambda: None)
    with pytest.raises(ValueError, match="No supported layers"):
        peftkit.preprocess_loraga(
            tiny_llama(), peftkit.LoraConfig(target_modules=["embed_tokens"], lora_ga_config={}), lambda: None
        )
    model = tiny_llama()
    config = peftkit.LoraConfig(
        r=20, target_modules=["k_proj"], init_lora_weights="lora_ga", lora_ga_config={}
    )
    peftkit.preprocess_loraga(model, config, _train_step(model))
    with pytest.raises(ValueError, match="2r = 40 singular components"):
        peftkit.get_peft_model(model, config)
