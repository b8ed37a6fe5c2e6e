"""IA3 against peft: files move both ways with the same logits, same parameter names, merge/unmerge,
multiple adapters, add_weighted_adapter, and mixed batches."""

import copy

import peft
import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_gpt2, tiny_llama
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case, conv_case

import peftkit

METHOD = "IA3Config"
ATOL = 1e-6  # same weights in both libraries: outputs equal within fp32 rounding


def _biased_llama():
    return tiny_llama(attention_bias=True, mlp_bias=True)


CASES = {
    "llama_k_v_ff": Case(
        tiny_llama,
        {"target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
    ),
    "llama_defaults": Case(tiny_llama, {}, task_type="CAUSAL_LM"),
    "llama_biased": Case(
        _biased_llama,
        {"target_modules": ["o_proj", "up_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
    ),
    "gpt2_conv1d_defaults": Case(tiny_gpt2, {}, task_type="CAUSAL_LM"),
    "conv_layers": conv_case(
        {
            "target_modules": ["lin", "conv2d", "conv2d_1x1", "conv3d", "out"],
            "feedforward_modules": ["conv2d_1x1", "conv3d", "out"],
        }
    ),
    "regex_targets": Case(
        tiny_llama, {"target_modules": r".*\.(q_proj|up_proj)", "feedforward_modules": ".*up_proj"}
    ),
}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_k_v_ff",
        no_match="conv_layers",
        no_weighted=None,  # IA3 combines adapters (tested below)
        mixed_batch=None,  # two adapters of other targets (tested below)
        default_targets=(
            "TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING",
            "TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING",
        ),
    )
)


def test_feedforward_modules_must_be_targeted():
    with pytest.raises(ValueError, match="subset of `target_modules`.*up_proj"):
        peftkit.IA3Config(target_modules=["k_proj"], feedforward_modules=["up_proj"])


def _pair_with_two_adapters(config_a: dict, config_b: dict):
    """peft and peftkit models with adapters "first" and "second" (perturbed in peft, copied into peftkit)."""
    base = tiny_llama()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.IA3Config(**config_a), adapter_name="first")
    theirs.add_adapter("second", peft.IA3Config(**config_b))
    theirs.base_model.set_adapter(["first", "second"])
    perturb_adapter_weights(theirs, scale=0.3)
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.IA3Config(**config_a), adapter_name="first")
    ours.add_adapter("second", peftkit.IA3Config(**config_b))
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not missing and not unexpected
    return theirs.eval(), ours.eval()


A = {"target_modules": ["k_proj", "down_proj"], "feedforward_modules": ["down_proj"]}
B = {"target_modules": ["k_proj", "q_proj"], "feedforward_modules": []}


def test_two_active_adapters_equal_peft():
    theirs, ours = _pair_with_two_adapters(A, B)
    theirs.base_model.set_adapter(["first", "second"])
    ours.base_model.set_adapter(["first", "second"])
    inputs = llama_inputs()
    with torch.no_grad():
        checks.assert_close(ours(**inputs).logits, theirs(**inputs).logits, ATOL, "two active adapters")
        expected = ours(**inputs).logits
        ours.merge_adapter()
        checks.assert_close(ours(**inputs).logits, expected, checks.MERGE_ATOL, "two merged adapters")


def test_add_weighted_adapter_equals_peft():
    theirs, ours = _pair_with_two_adapters(A, B)
    for model in (theirs, ours):
        model.add_weighted_adapter(["first", "second"], [0.3, 1.7], "mix")
        model.set_adapter("mix")
    assert ours.peft_config["mix"].target_modules == {"k_proj", "down_proj", "q_proj"}
    assert ours.peft_config["mix"].feedforward_modules == {"down_proj"}
    ours_vectors = {k: v for k, v in ours.state_dict().items() if ".mix" in k}
    theirs_vectors = {k: v for k, v in theirs.state_dict().items() if ".mix" in k}
    assert ours_vectors.keys() == theirs_vectors.keys()
    for key, value in theirs_vectors.items():
        checks.assert_close(ours_vectors[key], value, 0.0, key)  # same arithmetic: bitwise equal
    inputs = llama_inputs()
    with torch.no_grad():
        checks.assert_close(ours(**inputs).logits, theirs(**inputs).logits, ATOL, "weighted adapter")


def test_add_weighted_adapter_combines_regex_targets():
    base = tiny_llama()
    model = peftkit.get_peft_model(
        base, peftkit.IA3Config(target_modules=".*k_proj", feedforward_modules="x")
    )
    model.add_adapter("b", peftkit.IA3Config(target_modules=".*down_proj", feedforward_modules=".*down_proj"))
    model.add_weighted_adapter(["default", "b"], [0.5, 0.5], "mix")
    assert model.peft_config["mix"].target_modules == "(.*k_proj)|(.*down_proj)"
    assert model.peft_config["mix"].feedforward_modules == "(x)|(.*down_proj)"


def test_add_weighted_adapter_errors_and_existing_name():
    _, ours = _pair_with_two_adapters(A, B)
    with pytest.raises(ValueError, match="Adapter nope does not exist"):
        ours.add_weighted_adapter(["first", "nope"], [1.0, 1.0], "mix")
    with pytest.raises(ValueError, match="2 adapters but 1 weights"):
        ours.add_weighted_adapter(["first", "second"], [1.0], "mix")
    ours.add_adapter("regex", peftkit.IA3Config(target_modules=".*k_proj", feedforward_modules="x"))
    with pytest.raises(ValueError, match="same type for target and feedforward"):
        ours.add_weighted_adapter(["first", "regex"], [1.0, 1.0], "mix")
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    # an existing name: nothing happens, as in peft
    ours.add_weighted_adapter(["first", "second"], [5.0, 5.0], "second")
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in before.items())


def test_new_weighted_adapter_is_inactive_and_frozen():
    _, ours = _pair_with_two_adapters(A, B)
    ours.set_adapter("first")
    ours.add_weighted_adapter(["first", "second"], [0.5, 0.5], "mix")
    assert ours.active_adapters == ["first"]
    assert not any(p.requires_grad for n, p in ours.named_parameters() if ".mix" in n)


def test_mixed_batch_gives_each_sample_its_adapter():
    """peft 0.21 ignores `adapter_names` for IA3; peftkit applies each sample's adapter (or none)."""
    _, ours = _pair_with_two_adapters(A, B)
    inputs = llama_inputs(batch=3)
    with torch.no_grad():
        mixed = ours(**inputs, adapter_names=["first", "__base__", "second"]).logits
        expected = []
        for row, name in enumerate(["first", None, "second"]):
            if name is None:
                with ours.disable_adapter():
                    expected.append(ours(**inputs).logits[row])
            else:
                ours.set_adapter(name)
                expected.append(ours(**inputs).logits[row])
    checks.assert_close(mixed, torch.stack(expected), checks.BASE_ATOL, "mixed batch")
