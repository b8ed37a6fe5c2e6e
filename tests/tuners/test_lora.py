"""LoRA numerics against peft: same base weights + peft's adapter weights -> same outputs (fp32, 1e-6).

Each case builds the adapter in both libraries, checks the module tree (state-dict keys and shapes) and
the trainable parameter names, copies peft's perturbed adapter weights into peftkit, and compares the
forward, merged forward and unmerged-after-merge forward.
"""

import pytest
import torch
from tests.conftest import (
    conv_net,
    llama_inputs,
    make_pair,
    tiny_bert,
    tiny_gpt2,
    tiny_llama,
    tiny_llama_seq_cls,
    trainable_names,
)

ATOL = 1e-6  # COMPAT.md section 4: fp32 forward equal to peft within 1e-6


def _llama_out(model, inputs):
    return model(**inputs).logits


def _conv_out(model, inputs):
    return model(inputs["input_ids"])


def _conv_inputs():
    return {"input_ids": torch.randint(0, 20, (3, 8), generator=torch.Generator().manual_seed(3))}


def _bert_inputs():
    return llama_inputs()


def _llama_biased():
    return tiny_llama(attention_bias=True, mlp_bias=True)


CASES = {
    "q_v": (tiny_llama, {"target_modules": ["q_proj", "v_proj"]}, None, llama_inputs, _llama_out),
    "all_linear": (tiny_llama, {"target_modules": "all-linear"}, "CAUSAL_LM", llama_inputs, _llama_out),
    "default_targets": (tiny_llama, {}, "CAUSAL_LM", llama_inputs, _llama_out),
    "rslora_alpha": (
        tiny_llama,
        {"target_modules": ["o_proj"], "use_rslora": True, "lora_alpha": 32, "r": 4},
        None,
        llama_inputs,
        _llama_out,
    ),
    "dora_linear": (
        tiny_llama,
        {"target_modules": "all-linear", "use_dora": True},
        None,
        llama_inputs,
        _llama_out,
    ),
    "dora_embedding": (
        tiny_llama,
        {"target_modules": ["embed_tokens", "q_proj"], "use_dora": True},
        None,
        llama_inputs,
        _llama_out,
    ),
    "embedding": (tiny_llama, {"target_modules": ["embed_tokens"]}, None, llama_inputs, _llama_out),
    "gaussian_init": (
        tiny_llama,
        {"target_modules": ["k_proj"], "init_lora_weights": "gaussian"},
        None,
        llama_inputs,
        _llama_out,
    ),
    "bias_all": (
        _llama_biased,
        {"target_modules": ["o_proj"], "bias": "all"},
        None,
        llama_inputs,
        _llama_out,
    ),
    "bias_lora_only": (
        _llama_biased,
        {"target_modules": ["o_proj", "up_proj"], "bias": "lora_only"},
        None,
        llama_inputs,
        _llama_out,
    ),
    "lora_bias": (
        _llama_biased,
        {"target_modules": ["o_proj", "down_proj"], "lora_bias": True},
        None,
        llama_inputs,
        _llama_out,
    ),
    "rank_alpha_pattern": (
        tiny_llama,
        {
            "target_modules": ["q_proj", "v_proj"],
            "rank_pattern": {"v_proj": 2},
            "alpha_pattern": {r"layers\.1\.self_attn\.q_proj": 3},
        },
        None,
        llama_inputs,
        _llama_out,
    ),
    "layers_to_transform": (
        tiny_llama,
        {"target_modules": ["q_proj"], "layers_to_transform": [1], "layers_pattern": "layers"},
        None,
        llama_inputs,
        _llama_out,
    ),
    "exclude_modules": (
        tiny_llama,
        {"target_modules": "all-linear", "exclude_modules": ["down_proj"]},
        None,
        llama_inputs,
        _llama_out,
    ),
    "regex_targets": (
        tiny_llama,
        {"target_modules": r".*\.layers\.0\.mlp\.(up|gate)_proj"},
        None,
        llama_inputs,
        _llama_out,
    ),
    "modules_to_save": (
        tiny_llama,
        {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
        None,
        llama_inputs,
        _llama_out,
    ),
    "seq_cls_head": (
        tiny_llama_seq_cls,
        {"target_modules": ["q_proj", "v_proj"]},
        "SEQ_CLS",
        llama_inputs,
        _llama_out,
    ),
    "conv1d_gpt2": (
        tiny_gpt2,
        {"target_modules": ["c_attn", "c_proj"], "fan_in_fan_out": True},
        "CAUSAL_LM",
        llama_inputs,
        _llama_out,
    ),
    "conv1d_gpt2_dora": (
        tiny_gpt2,
        {"target_modules": ["c_attn"], "fan_in_fan_out": True, "use_dora": True},
        None,
        llama_inputs,
        _llama_out,
    ),
    "conv_layers": (
        conv_net,
        {"target_modules": ["conv1d", "conv2d", "conv2d_1x1", "conv3d", "emb", "lin"]},
        None,
        _conv_inputs,
        _conv_out,
    ),
    "conv_layers_dora": (
        conv_net,
        {"target_modules": ["conv1d", "conv2d", "conv2d_1x1", "conv3d", "lin"], "use_dora": True},
        None,
        _conv_inputs,
        _conv_out,
    ),
    "conv_lora_bias": (
        conv_net,
        {"target_modules": ["conv2d", "lin"], "lora_bias": True},
        None,
        _conv_inputs,
        _conv_out,
    ),
    "bert_seq_cls": (tiny_bert, {}, "SEQ_CLS", _bert_inputs, _llama_out),
}


@pytest.fixture(params=sorted(CASES), scope="module")
def case(request):
    model_fn, kwargs, task, inputs_fn, out_fn = CASES[request.param]
    base, theirs, ours = make_pair(model_fn, kwargs, task_type=task)
    return base, theirs, ours, inputs_fn(), out_fn


def test_same_module_tree_and_trainable_parameters(case):
    _, theirs, ours, _, _ = case
    sd_theirs, sd_ours = theirs.state_dict(), ours.state_dict()
    assert sorted(sd_theirs) == sorted(sd_ours)
    assert all(
        sd_theirs[k].shape == sd_ours[k].shape and sd_theirs[k].dtype == sd_ours[k].dtype for k in sd_theirs
    )
    assert trainable_names(ours) == trainable_names(theirs)
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    assert type(ours).__name__ == type(theirs).__name__


@torch.no_grad()
def test_forward_equals_peft(case):
    base, theirs, ours, inputs, out = case
    expected = out(theirs, inputs)
    actual = out(ours, inputs)
    assert not torch.allclose(expected, out(base, inputs), atol=1e-4), "the adapter must change the output"
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


@torch.no_grad()
def test_merged_and_unmerged_forward_equal_peft(case):
    _, theirs, ours, inputs, out = case
    unmerged = out(ours, inputs)
    theirs.merge_adapter()
    ours.merge_adapter()
    try:
        torch.testing.assert_close(out(ours, inputs), out(theirs, inputs), atol=ATOL, rtol=0)
        torch.testing.assert_close(out(ours, inputs), unmerged, atol=1e-5, rtol=0)
    finally:
        theirs.unmerge_adapter()
        ours.unmerge_adapter()
    torch.testing.assert_close(out(ours, inputs), unmerged, atol=1e-5, rtol=0)


@torch.no_grad()
def test_merge_and_unload_equals_peft(case):
    import copy

    _, theirs, ours, inputs, out = case
    expected = out(copy.deepcopy(theirs).merge_and_unload(), inputs)
    merged = copy.deepcopy(ours).merge_and_unload()
    from peftkit.tuners.tuners_utils import BaseTunerLayer

    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    torch.testing.assert_close(out(merged, inputs), expected, atol=1e-5, rtol=0)


def test_training_step_grads_match_peft():
    """Gradients of the adapter weights equal peft's (dropout off), so training follows the same path."""
    _, theirs, ours = make_pair(tiny_llama, {"target_modules": ["q_proj", "v_proj"], "use_dora": True})
    inputs = llama_inputs()
    for model in (theirs, ours):
        model.train()
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
    grads_theirs = {n: p.grad for n, p in theirs.named_parameters() if p.requires_grad}
    grads_ours = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    assert sorted(grads_theirs) == sorted(grads_ours)
    for name in grads_theirs:
        torch.testing.assert_close(grads_ours[name], grads_theirs[name], atol=1e-6, rtol=1e-5)


def test_default_initialisation_leaves_output_unchanged_and_matches_peft_distribution():
    import peftkit

    base = tiny_llama()
    inputs = llama_inputs()
    model = peftkit.get_peft_model(
        tiny_llama(), peftkit.LoraConfig(target_modules=["q_proj"], use_dora=True)
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, base(**inputs).logits, atol=1e-6, rtol=0)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
    bound = 1 / (layer.in_features**0.5)  # kaiming_uniform(a=sqrt(5)) on a (r, in) weight
    assert layer.lora_A["default"].weight.abs().max() <= bound
    assert layer.lora_A["default"].weight.std() > bound / 4
