"""MiSS against peft, for its three variants (balance, 'bat', 'mini'): files move both ways with the same
logits, gradients and merges equal peft's, 'bat' unmerges exactly, and bad shapes are clear errors."""

import copy

import pytest
import torch
from tests.conftest import conv_net, llama_inputs, tiny_gpt2, tiny_llama, tiny_llama_seq_cls
from tests.tuners import method_checks as checks
from tests.tuners import peft_equality
from tests.tuners.method_checks import Case

import peftkit

METHOD = "MissConfig"
QV = ["q_proj", "v_proj"]
MLP = ["q_proj", "up_proj", "down_proj"]  # square, 32 -> 64 and 64 -> 32 weights

CASES = {
    "balance_q_v": Case(tiny_llama, {"r": 4, "target_modules": QV}),
    "balance_uneven_chunks_random_init": Case(
        tiny_llama, {"r": 6, "target_modules": MLP, "init_weights": False, "miss_dropout": 0.1}
    ),
    "balance_defaults": Case(tiny_llama, {"r": 8}, task_type="CAUSAL_LM"),
    "bat_mlp": Case(tiny_llama, {"r": 4, "target_modules": MLP, "init_weights": "bat"}),
    "mini_mlp": Case(tiny_llama, {"r": 4, "mini_r": 8, "target_modules": MLP, "init_weights": "mini"}),
    "seq_cls_bias": Case(
        lambda: tiny_llama_seq_cls(attention_bias=True),
        {"r": 4, "target_modules": QV, "bias": "MiSS_only"},
        task_type="SEQ_CLS",
    ),
}
VARIANTS = ["balance_uneven_chunks_random_init", "bat_mlp", "mini_mlp"]


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_peft_file_loads_in_peftkit(case, tmp_path):
    checks.check_peft_file_loads_in_peftkit(METHOD, case, str(tmp_path))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_peftkit_file_loads_in_peft(case, tmp_path):
    checks.check_peftkit_file_loads_in_peft(METHOD, case, str(tmp_path))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_same_files_and_names_as_peft(case, tmp_path):
    checks.check_same_files_as_peft(METHOD, case, tmp_path)
    checks.check_trainable_names(METHOD, case)


@pytest.mark.parametrize("case", VARIANTS)
def test_gradients_and_merges_equal_peft(case):
    peft_equality.check_gradients_equal_peft(METHOD, CASES[case])
    peft_equality.check_merged_equals_peft(METHOD, CASES[case])


@pytest.mark.parametrize("case", ["balance_q_v", *VARIANTS])
def test_merge_unmerge_disable(case):
    checks.check_merge_unmerge_disable(METHOD, CASES[case])


@pytest.mark.parametrize("case", ["balance_q_v", "bat_mlp"])
def test_bf16_base_equals_peft(case):
    checks.check_bf16_equals_peft(METHOD, CASES[case])


@pytest.mark.parametrize("case", ["balance_q_v", "bat_mlp"])
def test_mixed_batch_gives_each_sample_its_adapter(case):
    checks.check_mixed_batch(METHOD, CASES[case])


@pytest.mark.parametrize("case", ["balance_uneven_chunks_random_init", "bat_mlp"])
def test_training_lowers_loss(case):
    checks.check_training_lowers_loss(METHOD, CASES[case], lr=1e-2)


def test_several_adapters_set_and_delete_as_peft():
    peft_equality.check_several_adapters_equal_peft(METHOD, CASES["bat_mlp"])


def test_target_matching_nothing_is_a_clear_error():
    checks.check_no_match_error(METHOD, CASES["balance_q_v"])


def test_no_weighted_adapter():
    checks.check_no_weighted_adapter(METHOD, CASES["balance_q_v"])


def test_low_cpu_mem_usage_load(tmp_path):
    checks.check_low_cpu_mem_usage_load(METHOD, CASES["mini_mlp"], str(tmp_path))


def test_bat_unmerge_restores_the_weight():
    model = checks.peftkit_model(METHOD, CASES["bat_mlp"], tiny_llama())
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    before = layer.base_layer.weight.detach().clone()
    model.merge_adapter()
    assert (layer.base_layer.weight - before).abs().max() > 1e-3
    model.unmerge_adapter()
    checks.assert_close(layer.base_layer.weight, before, 1e-5, "bat weight after merge + unmerge")


def test_each_adapter_keeps_its_own_variant():
    """peft applies the first adapter's variant to all of a layer's adapters; here each keeps its own, so a
    'bat' adapter beside a balance one gives what it gives alone."""
    base = tiny_llama()
    balance = peftkit.MissConfig(r=4, target_modules=QV)
    bat = peftkit.MissConfig(r=4, target_modules=QV, init_weights="bat")
    alone = peftkit.get_peft_model(copy.deepcopy(base), copy.deepcopy(bat), adapter_name="bat")
    checks.perturb_adapter_weights(alone)
    both = peftkit.get_peft_model(copy.deepcopy(base), balance)
    both.add_adapter("bat", copy.deepcopy(bat))
    both.load_state_dict(alone.state_dict(), strict=False)
    both.set_adapter("bat")
    inputs = llama_inputs()
    with torch.no_grad():
        expected = alone.eval()(**inputs).logits
        assert (expected - base(**inputs).logits).abs().max() > 1e-3
        checks.assert_close(both.eval()(**inputs).logits, expected, 1e-6, "bat beside balance")


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="init_weights.*True, False, 'bat' or 'mini'.*'fast'"):
        peftkit.MissConfig(init_weights="fast")
    for bad in ({"r": 0}, {"mini_r": -1}, {"miss_dropout": 1.5}, {"bias": "some"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            peftkit.MissConfig(**bad)
    llama = tiny_llama()
    with pytest.raises(ValueError, match=r"r x r blocks.*r=5"):
        peftkit.get_peft_model(
            copy.deepcopy(llama), peftkit.MissConfig(r=5, target_modules=QV, init_weights="bat")
        )
    with pytest.raises(ValueError, match=r"out_features \(32\) must be divisible by mini_r \(5\)"):
        peftkit.get_peft_model(
            copy.deepcopy(llama), peftkit.MissConfig(r=4, mini_r=5, target_modules=QV, init_weights="mini")
        )
    with pytest.raises(ValueError, match=r"`r` \(40\) must be less than or equal to in_features \(32\)"):
        peftkit.get_peft_model(copy.deepcopy(llama), peftkit.MissConfig(r=40, target_modules=QV))
    for model, target in ((conv_net(), "conv2d"), (tiny_gpt2(), "c_attn")):
        with pytest.raises(TypeError, match="not supported by MissModel"):
            peftkit.get_peft_model(model, peftkit.MissConfig(r=2, target_modules=[target]))


def test_default_targets_per_architecture_are_peft_s():
    from peft.utils import constants as theirs

    from peftkit.utils import constants as ours

    name = "TRANSFORMERS_MODELS_TO_MISS_TARGET_MODULES_MAPPING"
    assert getattr(ours, name) == getattr(theirs, name)


def test_config_fields_and_defaults_are_peft_s():
    checks.check_config_fields(METHOD)
