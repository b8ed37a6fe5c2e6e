"""MiSS against peft, for its three variants (balance, 'bat', 'mini'): files move both ways with the same
logits, gradients and merges equal peft's, 'bat' unmerges exactly, and bad shapes are clear errors."""

import copy

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

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="balance_q_v",
        merge=["balance_q_v", *VARIANTS],
        training=["balance_uneven_chunks_random_init", "bat_mlp"],
        bf16=["balance_q_v", "bat_mlp"],
        mixed_batch=["balance_q_v", "bat_mlp"],
        low_cpu_mem_usage="mini_mlp",
        gradients=VARIANTS,
        merged_as_peft=VARIANTS,
        several_adapters="bat_mlp",
        default_targets="TRANSFORMERS_MODELS_TO_MISS_TARGET_MODULES_MAPPING",
    )
)


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
    perturb_adapter_weights(alone)
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
