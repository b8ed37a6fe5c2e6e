"""DEFT against peft: files move both ways with the same logits, same names, same init from a seed,
merge/unmerge (exact: the removal term is cached at merge time), the PaRa and QR variants."""

import copy

import peft
import pytest
import torch
from tests.conftest import (
    conv_net,
    llama_inputs,
    perturb_adapter_weights,
    tiny_gpt2,
    tiny_llama,
    tiny_llama_seq_cls,
)
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case

import peftkit

METHOD = "DeftConfig"
QV = {"r": 4, "target_modules": ["q_proj", "v_proj"]}

CASES = {
    "llama_q_v": Case(tiny_llama, QV),
    "llama_defaults_causal_lm": Case(tiny_llama, {}, task_type="CAUSAL_LM"),
    "gpt2_conv1d_defaults": Case(tiny_gpt2, {"r": 4}, task_type="CAUSAL_LM"),
    "llama_qr_alpha_random_init": Case(
        tiny_llama,
        {**QV, "decomposition_method": "qr", "alpha": 8, "init_weights": False, "init_scale": 2.0},
    ),
    "llama_para": Case(tiny_llama, {**QV, "para": True}),
    "llama_rank_above_out_features": Case(tiny_llama, {"r": 40, "target_modules": ["k_proj"]}),
    "llama_bias_deft_only": Case(lambda: tiny_llama(attention_bias=True), {**QV, "bias": "deft_only"}),
    "llama_seq_cls": Case(tiny_llama_seq_cls, QV, task_type="SEQ_CLS"),
}
# a trained bias or classifier (modules_to_save) is kept by unload: "unload equals the base" leaves them out
NO_BIAS = {
    name: case for name, case in CASES.items() if "bias" not in case.config and case.task_type != "SEQ_CLS"
}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v",
        merge=NO_BIAS,
        training="llama_qr_alpha_random_init",
        gradients=["llama_q_v", "llama_qr_alpha_random_init", "gpt2_conv1d_defaults"],
        merged_as_peft=["llama_q_v", "llama_qr_alpha_random_init", "gpt2_conv1d_defaults"],
        default_targets="TRANSFORMERS_MODELS_TO_DEFT_TARGET_MODULES_MAPPING",
    )
)


@pytest.mark.parametrize("case", ["llama_q_v", "gpt2_conv1d_defaults", "llama_para"])
def test_same_init_from_a_seed_as_peft(case):
    """Identity init (R from P and W), the random init and PaRa draw the same tensors as peft (exact)."""
    theirs_config, ours_config = checks.config_pair(METHOD, CASES[case])
    base = CASES[case].model_fn()
    torch.manual_seed(7)
    theirs = peft.get_peft_model(copy.deepcopy(base), theirs_config)
    torch.manual_seed(7)
    ours = peftkit.get_peft_model(copy.deepcopy(base), ours_config)
    theirs_state, ours_state = theirs.state_dict(), ours.state_dict()
    assert theirs_state.keys() == ours_state.keys()
    for key, value in theirs_state.items():
        assert torch.equal(ours_state[key], value), key


def test_two_adapters_merge_together_and_unmerge_exactly():
    """Merging two adapters at once equals their joint forward (each removal term from the unmerged W),
    and unmerging restores the base weight (1e-6)."""
    base = tiny_llama()
    model = peftkit.get_peft_model(copy.deepcopy(base), peftkit.DeftConfig(**QV))
    model.add_adapter("other", peftkit.DeftConfig(r=2, target_modules=["q_proj"], decomposition_method="qr"))
    model.base_model.set_adapter(["default", "other"])
    perturb_adapter_weights(model)
    model.eval()
    inputs = llama_inputs()
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    original = q_proj.base_layer.weight.detach().clone()
    with torch.no_grad():
        joint = model(**inputs).logits
        model.merge_adapter()
        checks.assert_close(model(**inputs).logits, joint, checks.MERGE_ATOL, "two adapters merged")
        model.unmerge_adapter()
    checks.assert_close(q_proj.base_layer.weight, original, 1e-6, "unmerged weight")
    assert len(q_proj._cached_merge_factor) == 0


def test_bad_values_and_unsupported_layers_are_clear_errors():
    with pytest.raises(ValueError, match="decomposition_method"):
        peftkit.DeftConfig(decomposition_method="svd")
    with pytest.raises(ValueError, match="`r`"):
        peftkit.DeftConfig(r=0)
    with pytest.raises(ValueError, match="deft_dropout"):
        peftkit.DeftConfig(deft_dropout=1.5)
    with pytest.raises(ValueError, match="bias"):
        peftkit.DeftConfig(bias="lora_only")
    with pytest.raises(TypeError, match="not supported by DeftModel"):
        peftkit.get_peft_model(conv_net(), peftkit.DeftConfig(r=2, target_modules=["conv2d"]))


def test_scaling_is_not_supported_and_warns():
    model = peftkit.get_peft_model(tiny_llama(), peftkit.DeftConfig(**QV))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    with pytest.warns(UserWarning, match="Scaling operation for DEFT not supported"):
        layer.scale_layer(2.0)
