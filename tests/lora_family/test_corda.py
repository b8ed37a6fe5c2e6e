"""CorDA: calibration (`preprocess_corda`), initialisation and conversion to plain LoRA, against peft."""

import copy

import pytest
import torch
from tests.conftest import llama_inputs, tiny_llama
from tests.lora_family.helpers import max_diff, train_steps

import peftkit
from peftkit.tuners.lora.corda import CordaConfig, preprocess_corda

INIT_TOL = 1e-5  # logits of the initialised model vs the base model
RESIDUAL_TOL = 1e-4  # residual weights vs peft's (same calibration data)
TARGETS = ["q_proj", "v_proj", "down_proj"]


def _samples():
    # peft's calibration hook needs one sample per forward call (batch size 1)
    return [llama_inputs(batch=1, length=16, seed=s) for s in range(6)]


def _ours(base, method, **extra):
    model = copy.deepcopy(base)
    config = peftkit.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=TARGETS,
        init_lora_weights="corda",
        corda_config=CordaConfig(corda_method=method),
        **extra,
    )
    preprocess_corda(model, config, run_model=lambda: [model(**s) for s in _samples()])
    return peftkit.get_peft_model(model, config)


@pytest.mark.parametrize("method", ["ipm", "kpm"])
def test_output_equals_base_and_residual_equals_peft(method):
    import peft
    from peft.tuners.lora.config import CordaConfig as TheirCordaConfig
    from peft.tuners.lora.corda import preprocess_corda as their_preprocess

    base = tiny_llama()
    inputs = llama_inputs()
    ours = _ours(base, method)
    assert max_diff(ours(**inputs).logits, base(**inputs).logits) < INIT_TOL

    model = copy.deepcopy(base)
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=TARGETS,
        init_lora_weights="corda",
        corda_config=TheirCordaConfig(corda_method=method),
    )
    their_preprocess(model, config, run_model=lambda: [model(**s) for s in _samples()])
    theirs = peft.get_peft_model(model, config)
    their_state, our_state = theirs.state_dict(), ours.state_dict()
    assert sorted(our_state) == sorted(their_state)
    residuals = [k for k in our_state if k.endswith("base_layer.weight")]
    assert len(residuals) == 6
    for key in residuals:
        assert max_diff(our_state[key], their_state[key]) < RESIDUAL_TOL, key
    for key in (k for k in our_state if ".lora_" in k):  # singular vectors: up to sign
        assert max_diff(our_state[key].abs(), their_state[key].abs()) < RESIDUAL_TOL, key


def test_kpm_keeps_the_principal_context_directions_frozen():
    base = tiny_llama()
    ipm, kpm = _ours(base, "ipm"), _ours(base, "kpm")
    layer = lambda m: m.base_model.model.model.layers[0].self_attn.q_proj  # noqa: E731
    # IPM's adapter holds the largest components, KPM's the smallest
    assert layer(ipm).lora_B["default"].weight.norm() > 5 * layer(kpm).lora_B["default"].weight.norm()


def test_conversion_to_lora_loads_on_original_base_in_peft(tmp_path):
    import peft

    base = tiny_llama()
    inputs = llama_inputs()
    ours = _ours(base, "ipm")
    ours.save_pretrained(tmp_path / "init")
    train_steps(ours, inputs)
    expected = ours(**inputs).logits
    ours.save_pretrained(tmp_path / "lora", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    for lib in (peft, peftkit):
        loaded = lib.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "lora")
        assert max_diff(loaded(**inputs).logits, expected) < 1e-4, lib.__name__


def test_cache_files_and_clear_errors(tmp_path):
    base = tiny_llama()
    config = peftkit.LoraConfig(
        r=4,
        target_modules=["q_proj"],
        init_lora_weights="corda",
        corda_config=CordaConfig(
            cache_file=str(tmp_path / "cache.pt"), covariance_file=str(tmp_path / "cov.pt")
        ),
    )
    first = copy.deepcopy(base)
    preprocess_corda(first, config, run_model=lambda: [first(**s) for s in _samples()])
    assert (tmp_path / "cache.pt").exists() and (tmp_path / "cov.pt").exists()
    second = copy.deepcopy(base)
    preprocess_corda(second, config)  # from the cache, no calibration run
    a = first.model.layers[0].self_attn.q_proj.eigens
    b = second.model.layers[0].self_attn.q_proj.eigens
    assert torch.equal(a.U_WC, b.U_WC) and torch.equal(a.S_WC, b.S_WC)
    with pytest.raises(ValueError, match="preprocess_corda"):
        peftkit.get_peft_model(
            copy.deepcopy(base), peftkit.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="corda")
        )
    with pytest.raises(ValueError, match="run_model"):
        preprocess_corda(
            copy.deepcopy(base),
            peftkit.LoraConfig(r=4, target_modules=["q_proj"], corda_config=CordaConfig()),
        )
    assert isinstance(peftkit.LoraConfig(corda_config={"corda_method": "kpm"}).corda_config, CordaConfig)
