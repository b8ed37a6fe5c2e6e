"""PSOFT against peft: Cayley and Neumann rotations, free R, both A/B inits, the full and the seeded
low-rank SVD; files both ways (A and B rebuilt from the base weight), same forward, gradients and merges."""

import copy

import peft
import pytest
import torch
from tests.conftest import tiny_gpt2, tiny_llama, tiny_llama_seq_cls
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case

import peftkit
from peftkit.tuners.psoft.orth import OrthLayer

METHOD = "PsoftConfig"
QV = {"r": 4, "target_modules": ["q_proj", "v_proj"]}

CASES = {
    "llama_seq_cls": Case(tiny_llama_seq_cls, QV, task_type="SEQ_CLS"),
    "llama_q_v": Case(tiny_llama, QV),
    "llama_defaults": Case(tiny_llama, {"r": 8, "psoft_alpha": 16}, task_type="CAUSAL_LM"),
    "pissa_free_R_no_mags": Case(
        tiny_llama,
        {**QV, "ab_svd_init": "pissa_init", "psoft_orth": False, "psoft_mag_a": False, "psoft_mag_b": False},
    ),
    "neumann_eps_lowrank_seed": Case(
        tiny_llama,
        {
            **QV,
            "use_cayley_neumann": True,
            "num_cayley_neumann_terms": 6,
            "cayley_neumann_eps": 0.9,
            "psoft_svd": "lowrank",
            "psoft_svd_lowrank_niter": 4,
            "random_seed": 3,
        },
    ),
    "dropout_random_init_mag_b_only": Case(
        tiny_llama, {**QV, "psoft_dropout": 0.1, "init_weights": False, "psoft_mag_a": False}
    ),
}
NO_DROPOUT = {name: case for name, case in CASES.items() if "psoft_dropout" not in case.config}


# the classification head is a trained modules_to_save copy that unload keeps (as peft does): left out here
MERGEABLE = {name: case for name, case in CASES.items() if case.task_type != "SEQ_CLS"}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v",
        merge=MERGEABLE,
        gradients=NO_DROPOUT,
        merged_as_peft="neumann_eps_lowrank_seed",
        truncated_file=checks.ONE,
        default_targets="TRANSFORMERS_MODELS_TO_PSOFT_TARGET_MODULES_MAPPING",
    )
)


@pytest.mark.parametrize("case", ["llama_q_v", "neumann_eps_lowrank_seed", "pissa_free_R_no_mags"])
def test_frozen_factors_equal_peft_s(case):
    theirs_config, ours_config = checks.config_pair(METHOD, CASES[case])
    base = CASES[case].model_fn()
    theirs = peft.get_peft_model(copy.deepcopy(base), theirs_config)
    ours = peftkit.get_peft_model(copy.deepcopy(base), ours_config)
    theirs_layer = theirs.base_model.model.model.layers[1].self_attn.v_proj
    ours_layer = ours.base_model.model.model.layers[1].self_attn.v_proj
    for cache in ("_psoft_A_cache", "_psoft_B_cache"):
        expected, actual = getattr(theirs_layer, cache)["default"], getattr(ours_layer, cache)["default"]
        assert actual.dtype == expected.dtype == torch.float32
        checks.assert_close(actual, expected, 1e-6, cache)


def test_rotation_is_orthogonal_and_neumann_series_as_peft_sums_it():
    torch.manual_seed(0)
    layer = OrthLayer(5, mag_a=False, mag_b=False)
    layer.reset_parameters(init_weights=False)
    R = layer.get_matrix().detach()
    checks.assert_close(R @ R.T, torch.eye(5), 1e-5, "Cayley R R^T")
    for terms in (1, 2, 3, 4, 5, 7):
        ours = OrthLayer(5, mag_a=False, use_cayley_neumann=True, num_cayley_neumann_terms=terms)
        theirs = peft.tuners.psoft.layer.OrthLayer(
            5, mag_a=False, use_cayley_neumann=True, num_cayley_neumann_terms=terms
        )
        ours.reset_parameters(init_weights=False)
        theirs.load_state_dict(ours.state_dict())
        checks.assert_close(ours.get_matrix().detach(), theirs.get_matrix().detach(), 1e-6, f"{terms} terms")


def test_unsupported_layers_and_bad_values_are_clear_errors():
    with pytest.raises(TypeError, match="not supported by PsoftModel"):
        peftkit.get_peft_model(tiny_gpt2(), peftkit.PsoftConfig(r=4, target_modules=["c_attn"]))
    with pytest.raises(ValueError, match=r"`r` \(32\) must be less than or equal to min"):
        peftkit.get_peft_model(tiny_llama(), peftkit.PsoftConfig(target_modules=["v_proj"]))
    with pytest.raises(ValueError, match="ab_svd_init"):
        peftkit.PsoftConfig(ab_svd_init="lora_init")
    with pytest.raises(ValueError, match="psoft_svd"):
        peftkit.PsoftConfig(psoft_svd="randomized")
    with pytest.raises(ValueError, match="cayley_neumann_eps"):
        peftkit.PsoftConfig(use_cayley_neumann=True, cayley_neumann_eps=1.5)
    with pytest.raises(ValueError, match="psoft_dropout"):
        peftkit.PsoftConfig(psoft_dropout=1.5)
    with pytest.warns(UserWarning, match="only used when `use_cayley_neumann=True`"):
        peftkit.PsoftConfig(num_cayley_neumann_terms=3)
