"""FourierFT against peft: same frequency locations from the seed, files move both ways with the same
logits, same names, merge/unmerge."""

import copy

import peft
import pytest
import torch
from tests.conftest import conv_net, tiny_gpt2, tiny_llama
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case

import peftkit

METHOD = "FourierFTConfig"
QV = {"n_frequency": 10, "target_modules": ["q_proj", "v_proj"]}

CASES = {
    "llama_q_v": Case(tiny_llama, QV),
    "llama_defaults": Case(tiny_llama, {"n_frequency": 20}, task_type="CAUSAL_LM"),
    "gpt2_conv1d_defaults": Case(tiny_gpt2, {"n_frequency": 16}, task_type="CAUSAL_LM"),
    "llama_pattern_seed_scaling": Case(
        tiny_llama,
        {
            **QV,
            "n_frequency_pattern": {"v_proj": 5, "layers.1.self_attn.q_proj": 7},
            "random_loc_seed": 3,
            "scaling": 10.0,
        },
    ),
    "llama_zero_init": Case(tiny_llama, {**QV, "init_weights": True}),
    "llama_bias_fourier_only": Case(lambda: tiny_llama(attention_bias=True), {**QV, "bias": "fourier_only"}),
}
# a trained bias (bias="fourier_only") is not undone by disabling the adapter, so that case is left out there
NO_BIAS = {name: case for name, case in CASES.items() if "bias" not in case.config}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v",
        merge=NO_BIAS,
        training_lr=1e-3,
        default_targets="TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING",
    )
)


@pytest.mark.parametrize("case", ["llama_pattern_seed_scaling", "gpt2_conv1d_defaults"])
def test_frequency_locations_equal_peft(case):
    case = CASES[case]
    theirs_config, ours_config = checks.config_pair(METHOD, case)
    base = case.model_fn()
    theirs = peft.get_peft_model(copy.deepcopy(base), theirs_config)
    ours = peftkit.get_peft_model(copy.deepcopy(base), ours_config)
    theirs_layers = {n: m for n, m in theirs.named_modules() if hasattr(m, "fourierft_spectrum")}
    ours_layers = {n: m for n, m in ours.named_modules() if hasattr(m, "fourierft_spectrum")}
    assert theirs_layers.keys() == ours_layers.keys()
    for name, layer in ours_layers.items():
        assert torch.equal(layer.indices["default"], theirs_layers[name].indices["default"]), name


def test_too_many_frequencies_and_unsupported_layers():
    with pytest.raises(ValueError, match="less than or equal to the product.*2000.*1024"):
        peftkit.get_peft_model(
            tiny_llama(), peftkit.FourierFTConfig(n_frequency=2000, target_modules=["q_proj"])
        )
    with pytest.raises(TypeError, match="not supported by FourierFT"):
        peftkit.get_peft_model(conv_net(), peftkit.FourierFTConfig(n_frequency=4, target_modules=["conv2d"]))
    with pytest.raises(ValueError, match="positive integer"):
        peftkit.FourierFTConfig(n_frequency=0)
