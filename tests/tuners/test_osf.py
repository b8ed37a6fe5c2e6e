"""OSF against peft: the SVD split (default, fractional and per-pattern ranks; square and non-square
factors), the orthogonal gradient projection (same gradients and the same training step as peft's hooks),
files both ways, merges; one active adapter at a time."""

import copy

import peft
import pytest
import torch
from peft.tuners.osf import utils as peft_osf_utils
from tests.conftest import tiny_gpt2, tiny_llama, tiny_llama_seq_cls
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case, conv_case

import peftkit
from peftkit.tuners.osf import utils as osf_utils

METHOD = "OSFConfig"
QV = {"target_modules": ["q_proj", "v_proj"]}
SHAPES = {"target_modules": ["q_proj", "v_proj", "gate_proj", "down_proj"]}  # square, wide and tall weights

CASES = {
    "llama_seq_cls": Case(tiny_llama_seq_cls, QV, task_type="SEQ_CLS"),
    "llama_q_v": Case(tiny_llama, QV),
    "llama_defaults_fraction": Case(tiny_llama, {"effective_rank": 0.25}, task_type="CAUSAL_LM"),
    "rank_pattern_all_shapes": Case(
        tiny_llama, {**SHAPES, "effective_rank": 8, "rank_pattern": {"v_proj": 4, "gate": 0.75}}
    ),
    "random_init_all_shapes": Case(tiny_llama, {**SHAPES, "effective_rank": 12, "init_weights": False}),
    "custom_model_all_linear": conv_case({"effective_rank": 3}),
}


# the classification head is a trained modules_to_save copy that unload keeps (as peft does): left out here
MERGEABLE = {name: case for name, case in CASES.items() if case.task_type != "SEQ_CLS"}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v",
        merge=MERGEABLE,
        bf16=None,
        mixed_batch=None,  # one active adapter at a time (tested below)
        low_cpu_mem_usage="rank_pattern_all_shapes",
        gradients=checks.ALL,  # the gradients peft projects out of the frozen subspace
        merged_as_peft="rank_pattern_all_shapes",
        truncated_file=checks.ONE,
        default_targets="TRANSFORMERS_MODELS_TO_OSF_TARGET_MODULES_MAPPING",
    )
)


def test_training_steps_equal_peft_and_stay_orthogonal_to_the_frozen_subspace():
    case = CASES["rank_pattern_all_shapes"]
    _, theirs, ours = checks.paired(METHOD, case)
    inputs = case.inputs_fn()
    target = torch.randn(case.out_fn(theirs, inputs).shape, generator=torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in ours.named_parameters() if p.requires_grad}
    for model in (theirs, ours):
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        for _ in range(2):
            loss = torch.nn.functional.mse_loss(case.out_fn(model.train(), inputs), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    theirs_params = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        if param.requires_grad:
            checks.assert_close(param.detach(), theirs_params[name].detach(), checks.NUMERIC_ATOL, name)
    # the steps moved U_low only orthogonally to U_high (here the tall gate_proj, whose U_high is kept)
    layer = ours.base_model.model.model.layers[0].mlp.gate_proj
    name = "base_model.model.model.layers.0.mlp.gate_proj.osf_svd_params.default.U_low"
    step = layer.osf_svd_params["default"]["U_low"].detach() - before[name]
    assert step.abs().max() > 1e-4
    U_high = layer._osf_U_high["default"]
    checks.assert_close(U_high.T @ step, torch.zeros(U_high.shape[1], step.shape[1]), 1e-5, "U_high^T dU")


def test_several_active_adapters_are_a_clear_error_and_mixed_batches_work():
    case = CASES["llama_q_v"]
    _, _, ours = checks.paired(METHOD, case, second={**QV, "effective_rank": 4})
    with pytest.raises(ValueError, match="OSF applies one adapter at a time"):
        case.out_fn(ours, case.inputs_fn())
    checks.check_mixed_batch(METHOD, case)


def test_effective_ranks_resolved_as_peft():
    case = CASES["rank_pattern_all_shapes"]
    theirs_config, ours_config = checks.config_pair(METHOD, case)
    base = case.model_fn()
    theirs = peft.get_peft_model(copy.deepcopy(base), theirs_config)
    ours = peftkit.get_peft_model(copy.deepcopy(base), ours_config)
    ranks = {n: m.effective_rank["default"] for n, m in ours.named_modules() if hasattr(m, "osf_svd_params")}
    assert ranks == {
        n: m.effective_rank["default"] for n, m in theirs.named_modules() if hasattr(m, "osf_svd_params")
    }
    assert sorted(set(ranks.values())) == [4, 8, 24]  # v_proj 4, gate 0.75 * 32, the rest 8


def test_unsupported_layers_and_bad_values_are_clear_errors():
    # peft skips such targets silently (GPT-2's Conv1D, its own default targets for gpt2): here it is an error
    with pytest.raises(TypeError, match="not supported by OSFModel"):
        peftkit.get_peft_model(tiny_gpt2(), peftkit.OSFConfig(target_modules=["c_attn"]))
    with pytest.raises(ValueError, match="effective_rank` should be a positive integer.*0.01"):
        peftkit.get_peft_model(
            tiny_llama(), peftkit.OSFConfig(effective_rank=0.01, target_modules=["q_proj"])
        )
    with pytest.raises(ValueError, match="effective_rank must be None, a positive integer"):
        peftkit.OSFConfig(effective_rank=0)
    with pytest.raises(ValueError, match=r"rank_pattern\['q'\]"):
        peftkit.OSFConfig(rank_pattern={"q": -2})


@pytest.mark.parametrize("shape", [(12, 8), (8, 12)])
def test_osf_utils_equal_peft_s(shape):
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    expected, actual = (
        peft_osf_utils.decompose_weight_matrix(weight, 3),
        osf_utils.decompose_weight_matrix(weight, 3),
    )
    assert actual.keys() == expected.keys() and actual["rank_high"] == expected["rank_high"] == 3
    for key in ("U_high", "S_high", "V_high", "U_low", "S_low", "V_low"):
        assert torch.equal(actual[key], expected[key]), key
        assert isinstance(actual[key], torch.nn.Parameter) == isinstance(expected[key], torch.nn.Parameter)
    gen = torch.Generator().manual_seed(1)
    for svd in (expected, actual):
        gen.manual_seed(1)
        for key in ("U_low", "V_low"):
            svd[key].grad = torch.randn(svd[key].shape, generator=gen)
    peft_osf_utils.project_gradient_to_orthogonal_space(expected)
    osf_utils.project_gradient_to_orthogonal_space(actual)
    for key in ("U_low", "V_low"):
        checks.assert_close(actual[key].grad, expected[key].grad, 1e-6, f"projected gradient of {key}")
