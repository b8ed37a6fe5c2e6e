"""WaveFT against peft: every wavelet family reconstructs peft's weight change bit for bit, the coefficient
locations, seeded init and proportional budgets are peft's, files move both ways with the same logits,
merge/unmerge, gradients; families peft accepts but cannot run are config errors."""

import copy

import peft
import pytest
import torch
from peft.tuners.waveft.waverec2d import waverec2d
from tests.conftest import conv_net, tiny_gpt2, tiny_llama
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case
from torch import nn

import peftkit
from peftkit.tuners.waveft.idwt import inverse_dwt2
from peftkit.tuners.waveft.wavelets import WAVELET_FAMILIES

METHOD = "WaveFTConfig"
QV = {"n_frequency": 40, "target_modules": ["q_proj", "v_proj"]}

CASES = {
    "llama_q_v": Case(tiny_llama, QV),
    "llama_defaults": Case(tiny_llama, {"n_frequency": 50}, task_type="CAUSAL_LM"),
    "gpt2_conv1d_sym3_proportional": Case(
        tiny_gpt2,
        {
            "n_frequency": 30,
            "wavelet_family": "sym3",
            "proportional_parameters": True,
            "target_modules": ["c_attn", "mlp.c_proj"],
        },
        task_type="CAUSAL_LM",
    ),
    "llama_pattern_seed_scaling_coif2": Case(
        tiny_llama,
        {
            "n_frequency": 20,
            "target_modules": ["q_proj", "down_proj"],
            "n_frequency_pattern": {"down_proj": 60, "layers.1.self_attn.q_proj": 7},
            "random_loc_seed": 3,
            "scaling": 10.0,
            "wavelet_family": "coif2",
        },
    ),
    "llama_no_idwt": Case(tiny_llama, {**QV, "use_idwt": False}),
    "llama_bias_waveft_only": Case(lambda: tiny_llama(attention_bias=True), {**QV, "bias": "waveft_only"}),
}
# a trained bias (bias="waveft_only") is not undone by disabling the adapter, so that case is left out there
NO_BIAS = {name: case for name, case in CASES.items() if "bias" not in case.config}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v",
        merge=NO_BIAS,
        training_lr=1e-3,
        bf16="llama_pattern_seed_scaling_coif2",
        gradients=["llama_q_v", "gpt2_conv1d_sym3_proportional"],
        default_targets="TRANSFORMERS_MODELS_TO_WAVEFT_TARGET_MODULES_MAPPING",
    )
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inverse_transform_is_peft_s_for_every_family(dtype):
    generator = torch.Generator().manual_seed(0)
    for family in WAVELET_FAMILIES:
        bands = [torch.randn(9, 12, generator=generator).to(dtype) for _ in range(4)]
        expected = waverec2d((bands[0], tuple(bands[1:])), family)
        actual = inverse_dwt2(*bands, family)
        assert actual.dtype == dtype and torch.equal(actual, expected), family


def test_haar_reconstruction_by_hand():
    """db1: each 2x2 block is (a + h + v + d, a + h - v - d; a - h + v - d, a - h - v + d) / 2, with h
    the band whose rows carry the high-pass filter."""
    a, h, v, d = (torch.tensor([[value]]) for value in (1.0, 2.0, 3.0, 5.0))
    expected = torch.tensor([[a + h + v + d, a + h - v - d], [a - h + v - d, a - h - v + d]]) / 2
    torch.testing.assert_close(inverse_dwt2(a, h, v, d, "db1"), expected, atol=1e-6, rtol=0)


def test_every_family_gives_peft_s_weight_change():
    """Odd layer sizes (the padded grid is made even, the result cropped back), seeded random init: the
    same coefficients and the same delta W for every wavelet family peftkit offers."""
    base = nn.Sequential(nn.Linear(23, 17))
    for family in WAVELET_FAMILIES:
        config = {"n_frequency": 30, "target_modules": ["0"], "wavelet_family": family, "init_weights": False}
        torch.manual_seed(1)
        theirs = peft.get_peft_model(copy.deepcopy(base), peft.WaveFTConfig(**config))
        torch.manual_seed(1)
        ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.WaveFTConfig(**config))
        layer_theirs, layer_ours = theirs.base_model.model[0], ours.base_model.model[0]
        assert torch.equal(layer_ours.waveft_spectrum["default"], layer_theirs.waveft_spectrum["default"])
        assert torch.equal(layer_ours.waveft_indices["default"], layer_theirs.waveft_indices["default"])
        with torch.no_grad():
            expected = layer_theirs.get_delta_weight("default")
            assert expected.abs().max() > 0
            checks.assert_close(layer_ours.get_delta_weight("default"), expected, 1e-7, family)


@pytest.mark.parametrize("case", ["gpt2_conv1d_sym3_proportional", "llama_pattern_seed_scaling_coif2"])
def test_coefficient_counts_are_peft_s(case):
    theirs_config, ours_config = checks.config_pair(METHOD, CASES[case])
    base = CASES[case].model_fn()
    theirs = peft.get_peft_model(copy.deepcopy(base), theirs_config)
    ours = peftkit.get_peft_model(copy.deepcopy(base), ours_config)
    counts = [
        {
            n: m.waveft_n_frequency["default"]
            for n, m in model.named_modules()
            if hasattr(m, "waveft_spectrum")
        }
        for model in (theirs, ours)
    ]
    assert counts[1] == counts[0] and len(set(counts[1].values())) > 1


def test_families_peft_accepts_but_cannot_run_are_config_errors():
    """peft 0.21's config accepts db11-db38, sym11-sym20, coif5-coif17 but has no (working) filters for them:
    its forward fails. peftkit refuses them when the config is made, naming the families it has."""
    theirs = peft.get_peft_model(tiny_llama(), peft.WaveFTConfig(**QV, wavelet_family="db11"))
    with pytest.raises(ValueError, match="Unknown wavelet name"):
        theirs(input_ids=torch.tensor([[1, 2]]))
    for family in ("db11", "sym20", "coif5", "haar"):
        with pytest.raises(ValueError, match=f"Wavelet family '{family}' not supported.*'db1'.*'coif4'"):
            peftkit.WaveFTConfig(wavelet_family=family)
    with pytest.warns(UserWarning, match="coif4.*not an orthogonal wavelet filter"):
        peftkit.WaveFTConfig(wavelet_family="coif4")


def test_bad_sizes_layers_and_config_values():
    with pytest.raises(ValueError, match="less than or equal to the product.*2000.*1024"):
        peftkit.get_peft_model(
            tiny_llama(), peftkit.WaveFTConfig(n_frequency=2000, target_modules=["q_proj"])
        )
    with pytest.raises(TypeError, match="not supported by WaveFTModel"):
        peftkit.get_peft_model(conv_net(), peftkit.WaveFTConfig(n_frequency=4, target_modules=["conv2d"]))
    with pytest.raises(ValueError, match="bias must be one of"):
        peftkit.WaveFTConfig(bias="fourier_only")
    with pytest.raises(ValueError, match="positive integer"):
        peftkit.WaveFTConfig(n_frequency=0)
    with pytest.raises(ValueError, match="layers_to_transform` must also be specified"):
        peftkit.WaveFTConfig(layers_pattern="layers")
