"""PEANuT against peft: depth 0..2, other activations and scalings; files both ways, same forward,
gradients and merges (two adapters merged, each from the original weight), a seeded init drawing peft's
numbers."""

import copy

import peft
import pytest
import torch
from tests.conftest import tiny_gpt2, tiny_llama, tiny_llama_seq_cls
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case

import peftkit

METHOD = "PeanutConfig"
QV = {"r": 4, "target_modules": ["q_proj", "v_proj"]}

CASES = {
    "llama_seq_cls": Case(tiny_llama_seq_cls, QV, task_type="SEQ_CLS"),
    "llama_q_v": Case(tiny_llama, QV),
    "llama_defaults": Case(tiny_llama, {"r": 4, "depth": 1}, task_type="CAUSAL_LM"),
    "llama_depth2_gelu_scaled": Case(
        tiny_llama,
        {**QV, "depth": 2, "act_fn": "gelu", "scaling": 0.5, "target_modules": ["q_proj", "down_proj"]},
    ),
    "llama_random_init_layer1": Case(
        tiny_llama, {**QV, "depth": 1, "init_weights": False, "layers_to_transform": [1]}
    ),
}


# the classification head is a trained modules_to_save copy that unload keeps (as peft does): left out here
MERGEABLE = {name: case for name, case in CASES.items() if case.task_type != "SEQ_CLS"}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v",
        merge=MERGEABLE,
        training_lr=1e-3,
        bf16=None,
        low_cpu_mem_usage="llama_depth2_gelu_scaled",
        gradients=checks.ALL,
        truncated_file=checks.ONE,
        default_targets="TRANSFORMERS_MODELS_TO_PEANUT_TARGET_MODULES_MAPPING",
    )
)


def test_two_adapters_merged_against_the_original_weight_equal_peft():
    case = CASES["llama_depth2_gelu_scaled"]
    second = {**QV, "depth": 1}
    checks.check_merged_equals_peft(METHOD, case, second=second)
    checks.check_gradients_equal_peft(METHOD, case, second=second)


def test_unmerging_restores_the_base_weight_exactly():
    _, _, ours = checks.paired(METHOD, CASES["llama_q_v"], second={**QV, "depth": 1})
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    weight = layer.base_layer.weight.clone()
    ours.merge_adapter()
    assert (layer.base_layer.weight - weight).abs().max() > 1e-3
    ours.unmerge_adapter()
    assert torch.equal(layer.base_layer.weight, weight)


def test_seeded_init_draws_peft_s_numbers():
    case = CASES["llama_random_init_layer1"]
    base = case.model_fn()
    torch.manual_seed(5)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.PeanutConfig(**case.config))
    torch.manual_seed(5)
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.PeanutConfig(**case.config))
    expected = {k: v for k, v in theirs.state_dict().items() if "peanut_" in k}
    actual = {k: v for k, v in ours.state_dict().items() if "peanut_" in k}
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


def test_unsupported_layers_and_bad_values_are_clear_errors():
    with pytest.raises(TypeError, match="not supported by PeanutModel"):
        peftkit.get_peft_model(tiny_gpt2(), peftkit.PeanutConfig(target_modules=["c_attn"]))
    with pytest.raises(ValueError, match="Unsupported `act_fn`: 'nope'"):
        peftkit.PeanutConfig(act_fn="nope")
    with pytest.raises(ValueError, match="depth"):
        peftkit.PeanutConfig(depth=-1)
    with pytest.raises(ValueError, match="`r` must be a positive integer"):
        peftkit.PeanutConfig(r=0)
