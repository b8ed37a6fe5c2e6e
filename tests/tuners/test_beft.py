"""BEFT against peft: files move both ways with the same logits, same names, the trained bias merges into
the base bias (a clear error where the base layer has none), mixed batches, peft's seeded init."""

import copy

import peft
import pytest
import torch
from tests.conftest import llama_inputs, tiny_bert, tiny_gpt2, tiny_llama
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case

import peftkit
from peftkit.utils.warnings import PeftWarning

METHOD = "BeftConfig"
V = {"target_modules": ["v_proj"]}


def llama_with_bias():
    return tiny_llama(attention_bias=True)


CASES = {
    "llama_v_with_bias": Case(llama_with_bias, {"target_modules": ["q_proj", "v_proj"]}),
    "llama_defaults_no_bias": Case(tiny_llama, {}, task_type="CAUSAL_LM"),
    "llama_random_init": Case(llama_with_bias, {**V, "init_weights": False}),
    "bert_seq_cls": Case(tiny_bert, {"target_modules": ["value"]}, task_type="SEQ_CLS"),
}
# no bias to merge into in the defaults case; the seq-cls head (modules_to_save) stays trained after unload
MERGEABLE = {name: CASES[name] for name in ("llama_v_with_bias", "llama_random_init")}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_v_with_bias",
        merge=MERGEABLE,
        default_targets="TRANSFORMERS_MODELS_TO_BEFT_TARGET_MODULES_MAPPING",
    )
)


def test_merged_bias_equals_peft_s():
    """Merging writes base bias + beta into the base layer (fp32: the same sum peft writes)."""
    base = llama_with_bias()
    theirs = checks.peft_model(METHOD, CASES["llama_v_with_bias"], base)
    ours = peftkit.get_peft_model(
        copy.deepcopy(base), peftkit.BeftConfig(target_modules=["q_proj", "v_proj"])
    )
    ours.load_state_dict(theirs.state_dict())
    theirs, ours = theirs.merge_and_unload(), ours.merge_and_unload()
    for name in ("q_proj", "v_proj"):
        expected = getattr(theirs.model.layers[1].self_attn, name).bias
        actual = getattr(ours.model.layers[1].self_attn, name).bias
        assert torch.equal(actual, expected), name


def test_forward_adds_the_bias_to_the_base_output():
    base = tiny_llama()
    model = peftkit.get_peft_model(copy.deepcopy(base), peftkit.BeftConfig(**V, init_weights=False))
    layer = model.base_model.model.model.layers[0].self_attn.v_proj
    x = torch.randn(3, 32)
    expected = base.model.layers[0].self_attn.v_proj(x) + layer.beft_bias["default"][0]
    torch.testing.assert_close(layer(x), expected, atol=0, rtol=0)


def test_merging_into_a_layer_without_bias_is_a_clear_error():
    with pytest.warns(PeftWarning, match="no bias"):
        model = peftkit.get_peft_model(tiny_llama(), peftkit.BeftConfig(**V))
    with pytest.raises(ValueError, match="BEFT cannot merge .* has none"):
        model.merge_and_unload()
    assert not any(layer.merged for layer in model.base_model._tuner_layers(model))
    assert model.unload() is not None  # unloading needs no merge


@pytest.mark.parametrize("init_weights", [True, False])
def test_seeded_init_equals_peft_s(init_weights):
    """The bias is drawn from torch's global RNG as in peft (also when then zeroed), so a seed gives the same
    adapter and leaves the RNG in the same state."""
    base = llama_with_bias()
    adapters = []
    for lib in (peft, peftkit):
        torch.manual_seed(7)
        model = lib.get_peft_model(copy.deepcopy(base), lib.BeftConfig(**V, init_weights=init_weights))
        adapters.append(({k: v for k, v in model.state_dict().items() if "beft_" in k}, torch.rand(1)))
    (theirs, their_next), (ours, our_next) = adapters
    assert theirs.keys() == ours.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert torch.equal(our_next, their_next)


def test_only_linear_layers():
    with pytest.raises(TypeError, match="not supported by BeftModel"):
        peftkit.get_peft_model(tiny_gpt2(), peftkit.BeftConfig(target_modules=["c_attn"]))


def test_several_adapters_add_their_biases():
    model = peftkit.get_peft_model(llama_with_bias(), peftkit.BeftConfig(**V, init_weights=False))
    model.add_adapter("second", peftkit.BeftConfig(**V, init_weights=False))
    layer = model.base_model.model.model.layers[0].self_attn.v_proj
    x = torch.randn(2, 32)
    base_out = layer.base_layer(x)
    model.base_model.set_adapter(["default", "second"])
    expected = base_out + layer.beft_bias["default"][0] + layer.beft_bias["second"][0]
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=0)
    model.delete_adapter("default")
    assert list(layer.beft_bias) == ["second"]
    torch.testing.assert_close(layer(x), base_out + layer.beft_bias["second"][0], atol=1e-6, rtol=0)


def test_inputs_of_other_lengths():
    """The bias broadcasts over any leading shape (batch, sequence)."""
    model = peftkit.get_peft_model(llama_with_bias(), peftkit.BeftConfig(**V, init_weights=False)).eval()
    with torch.no_grad():
        assert model(**llama_inputs(batch=1, length=3)).logits.shape == (1, 3, 128)


def test_mixed_model_rejects_beft_as_peft_s_does():
    """peft registers BEFT as mixed-compatible, yet its PeftMixedModel refuses it; peftkit refuses it too."""
    for lib in (peft, peftkit):
        with pytest.raises(ValueError, match="'BEFT' is not compatible with the `PeftMixedModel`"):
            lib.PeftMixedModel(tiny_llama(), lib.BeftConfig(**V))
