"""GLoRA against peft: every path form (lora / vector / constant / none), with and without a base bias;
files both ways, same forward, gradients and merges (several adapters merged against the original
weight), a seeded random init drawing peft's numbers."""

import copy

import peft
import pytest
import torch
from tests.conftest import conv_net, tiny_llama, tiny_llama_seq_cls
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case

import peftkit

METHOD = "GloraConfig"
QV = {"r": 2, "target_modules": ["q_proj", "v_proj"]}


def biased_llama():
    """Attention projections with a bias, non-zero (transformers starts biases at zero: b0 * D would vanish)."""
    model = tiny_llama(attention_bias=True)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    return model


CASES = {
    "llama_seq_cls": Case(tiny_llama_seq_cls, QV, task_type="SEQ_CLS"),
    "llama_q_v": Case(tiny_llama, QV),
    "llama_defaults": Case(tiny_llama, {"r": 4}, task_type="CAUSAL_LM"),
    "bias_lora_lora_constant": Case(biased_llama, QV),
    "bias_vector_vector_vector": Case(
        biased_llama, {**QV, "config_A_B": "vector", "config_C": "vector", "config_D_E": "vector"}
    ),
    "bias_constant_none_vector_random_init": Case(
        biased_llama,
        {**QV, "config_A_B": "constant", "config_C": "none", "config_D_E": "vector", "init_weights": False},
    ),
    "bias_none_lora_constant_bias_trained": Case(
        biased_llama, {**QV, "config_A_B": "none", "bias": "glora_only"}
    ),
}
# a trained bias (bias="glora_only") is not undone by disabling the adapter, so that case is left out there
# (and the classification head, a trained modules_to_save copy that unload keeps, as peft does)
NO_BIAS = {
    name: case for name, case in CASES.items() if "bias" not in case.config and case.task_type != "SEQ_CLS"
}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v",
        merge=NO_BIAS,
        training_lr=1e-3,
        bf16=None,
        mixed_batch="bias_vector_vector_vector",
        low_cpu_mem_usage="bias_vector_vector_vector",
        gradients=checks.ALL,
        truncated_file=checks.ONE,
        default_targets="TRANSFORMERS_MODELS_TO_GLORA_TARGET_MODULES_MAPPING",
    )
)


@pytest.mark.parametrize("name", ["llama_q_v", "bias_vector_vector_vector"])
def test_two_adapters_merged_against_the_original_weight_equal_peft(name):
    # each adapter's W0 * A must use the original W0, not the weight the first merge already changed
    second = {**CASES[name].config, "r": 3}
    checks.check_merged_equals_peft(METHOD, CASES[name], second=second)
    checks.check_gradients_equal_peft(METHOD, CASES[name], second=second)


def test_unmerging_restores_the_base_weights_exactly():
    _, _, ours = checks.paired(METHOD, CASES["bias_vector_vector_vector"], second=CASES["llama_q_v"].config)
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    weight, bias = layer.base_layer.weight.clone(), layer.base_layer.bias.clone()
    ours.merge_adapter()
    assert (layer.base_layer.weight - weight).abs().max() > 1e-3
    ours.unmerge_adapter()
    assert torch.equal(layer.base_layer.weight, weight) and torch.equal(layer.base_layer.bias, bias)


def test_seeded_random_init_draws_peft_s_numbers():
    case = CASES["bias_constant_none_vector_random_init"]
    config = {**case.config, "config_A_B": "lora", "config_C": "lora"}
    theirs_config, ours_config = getattr(peft, METHOD)(**config), getattr(peftkit, METHOD)(**config)
    base = case.model_fn()
    torch.manual_seed(5)
    theirs = peft.get_peft_model(copy.deepcopy(base), theirs_config)
    torch.manual_seed(5)
    ours = peftkit.get_peft_model(copy.deepcopy(base), ours_config)
    expected = {k: v for k, v in theirs.state_dict().items() if "glora_" in k}
    actual = {k: v for k, v in ours.state_dict().items() if "glora_" in k}
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


def test_unsupported_layers_and_bad_values_are_clear_errors():
    with pytest.raises(TypeError, match="not supported by GloraModel"):
        peftkit.get_peft_model(conv_net(), peftkit.GloraConfig(target_modules=["conv2d"]))

    class QuantizedLinear(torch.nn.Linear):  # a subclass: GLoRA cannot rewrite its weight
        pass

    model = torch.nn.Sequential(QuantizedLinear(4, 4))
    with pytest.raises(TypeError, match="plain `torch.nn.Linear`"):
        peftkit.get_peft_model(model, peftkit.GloraConfig(target_modules=["0"]))
    with pytest.raises(ValueError, match="config_D_E.*constant, none, vector"):
        peftkit.GloraConfig(config_D_E="lora")
    with pytest.raises(ValueError, match="config_C"):
        peftkit.GloraConfig(config_C="constant")
    with pytest.raises(ValueError, match="non-negative"):
        peftkit.GloraConfig(r=-1)


def test_switched_off_paths_are_saved_zero_buffers_that_never_train(tmp_path):
    config = {**QV, "config_A_B": "none"}
    model = peftkit.get_peft_model(biased_llama(), peftkit.GloraConfig(**config))
    model.save_pretrained(str(tmp_path))
    loaded = peftkit.PeftModel.from_pretrained(biased_llama(), str(tmp_path), is_trainable=True)
    for candidate in (model, loaded):
        buffers = {n: b for n, b in candidate.named_buffers() if ".glora_" in n}
        assert any(n.endswith("glora_A.default.zeros") for n in buffers)
        assert not any(b.requires_grad for b in buffers.values())
        assert any(p.requires_grad for n, p in candidate.named_parameters() if "glora_C" in n)
