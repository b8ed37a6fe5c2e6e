"""HiRA against peft: files move both ways with the same outputs, same names and keys, merge/unmerge,
gradients, seeded initialisation, rank_pattern as peft applies it, bitsandbytes layers."""

import copy
import warnings

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
from tests.tuners.method_checks import Case, conv_case

import peftkit
from peftkit.utils.warnings import AdapterLoadError, PeftWarning

METHOD = "HiraConfig"
QV = {"r": 4, "target_modules": ["q_proj", "v_proj"]}
CONV_TARGETS = ["emb", "conv1d", "conv2d", "conv2d_1x1", "conv3d", "lin"]

CASES = {
    "llama_q_v": Case(tiny_llama, QV),
    "llama_defaults": Case(tiny_llama, {"r": 8}, task_type="CAUSAL_LM"),
    "gpt2_conv1d_defaults": Case(tiny_gpt2, {"r": 4}, task_type="CAUSAL_LM"),
    "conv_embedding_linear": conv_case({"r": 2, "target_modules": CONV_TARGETS}),
    "llama_gaussian_dropout_one_layer": Case(
        tiny_llama,
        {**QV, "init_weights": "gaussian", "hira_dropout": 0.1, "layers_to_transform": [1]},
    ),
    "seq_cls": Case(tiny_llama_seq_cls, QV, task_type="SEQ_CLS"),
}
# the trained classification head (modules_to_save) stays after unload: that case is left out there
WITHOUT_HEAD = {name: case for name, case in CASES.items() if case.task_type != "SEQ_CLS"}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v",
        merge=WITHOUT_HEAD,
        mixed_batch=["llama_q_v", "conv_embedding_linear"],
        low_cpu_mem_usage="conv_embedding_linear",
        gradients=["llama_q_v", "gpt2_conv1d_defaults", "conv_embedding_linear"],
        default_targets="TRANSFORMERS_MODELS_TO_HIRA_TARGET_MODULES_MAPPING",
    )
)


# ----- HiRA's own -----
@pytest.mark.parametrize("case", ["llama_q_v", "gpt2_conv1d_defaults", "conv_embedding_linear"])
def test_merged_weights_equal_peft_and_unmerge_restores_them_exactly(case):
    """The merged weight is W0 + W0 * (B A) as peft's (1e-6, fp32); unmerging gives W0 back bit for bit."""
    _, theirs, ours = checks.paired(METHOD, CASES[case])
    originals = {n: p.detach().clone() for n, p in ours.named_parameters() if "base_layer.weight" in n}
    theirs.merge_adapter()
    ours.merge_adapter()
    merged_theirs = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        if name in originals:
            checks.assert_close(param, merged_theirs[name], 1e-6, f"merged {name}")
            assert not torch.equal(param, originals[name]), name
    ours.unmerge_adapter()
    for name, param in ours.named_parameters():
        if name in originals:
            assert torch.equal(param, originals[name]), name


def test_two_merged_adapters_equal_both_active():
    """Merging adds W0 * (B_i A_i) for each adapter on the original W0: the merged model computes what
    the two active adapters compute, and unmerging restores W0 exactly."""
    model = peftkit.get_peft_model(tiny_llama(), peftkit.HiraConfig(**QV))
    model.add_adapter("second", peftkit.HiraConfig(**QV))
    model.base_model.set_adapter(["default", "second"])
    perturb_adapter_weights(model, scale=0.3)
    model.eval()
    inputs = llama_inputs()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    original = layer.base_layer.weight.detach().clone()
    with torch.no_grad():
        both = model(**inputs).logits
        model.merge_adapter()
        checks.assert_close(model(**inputs).logits, both, checks.MERGE_ATOL, "two merged adapters")
        model.unmerge_adapter()
    assert torch.equal(layer.base_layer.weight, original)


@pytest.mark.parametrize("init_weights", [True, "gaussian", False])
def test_seeded_initialisation_equals_peft(init_weights):
    """The same draws in the same order as peft: a seeded model starts with peft's very tensors."""
    kwargs = {"r": 3, "target_modules": CONV_TARGETS, "init_weights": init_weights}
    base = conv_net()
    torch.manual_seed(11)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.HiraConfig(**kwargs))
    torch.manual_seed(11)
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.HiraConfig(**kwargs))
    expected = {n: p for n, p in theirs.named_parameters() if "hira_" in n}
    actual = {n: p for n, p in ours.named_parameters() if "hira_" in n}
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name
    factor_b = actual["base_model.model.lin.hira_B.default"]
    assert factor_b.abs().sum() == 0 if init_weights else factor_b.abs().sum() > 0


def test_rank_pattern_applies_where_peft_applies_it():
    """peft 0.21 gives a plain layer it newly wraps `r` and ignores rank_pattern there (peftkit warns), but
    applies rank_pattern to a second adapter on that layer: the shapes, and so the files, are peft's."""
    config = {"r": 4, "target_modules": ["q_proj", "v_proj"], "rank_pattern": {"v_proj": 2}}
    base = tiny_llama()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.HiraConfig(**config))
    with pytest.warns(PeftWarning, match="rank_pattern does not apply"):
        ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.HiraConfig(**config))
    theirs.add_adapter("second", peft.HiraConfig(**config))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PeftWarning)  # here rank_pattern applies: no warning
        ours.add_adapter("second", peftkit.HiraConfig(**config))
    shapes = {n: tuple(p.shape) for n, p in ours.state_dict().items() if "hira_" in n}
    assert shapes == {n: tuple(p.shape) for n, p in theirs.state_dict().items() if "hira_" in n}
    assert shapes["base_model.model.model.layers.0.self_attn.v_proj.hira_A.second"] == (2, 32)
    assert shapes["base_model.model.model.layers.0.self_attn.v_proj.hira_A.default"] == (4, 32)


def test_conv_padding_mode_is_the_base_layer_s():
    """The adapter convolves as the base layer does (here circular padding), so unmerged and merged
    outputs agree (peft's adapter pads with zeros there)."""
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"))
    model = peftkit.get_peft_model(base, peftkit.HiraConfig(r=2, target_modules=["0"]))
    perturb_adapter_weights(model, scale=0.5)
    x = torch.randn(2, 2, 5, 5)
    with torch.no_grad():
        unmerged = model(x)
        model.merge_adapter()
        checks.assert_close(model(x), unmerged, checks.MERGE_ATOL, "circular padding, merged")


def test_unsupported_layers_are_clear_errors():
    grouped = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(NotImplementedError, match="groups > 1"):
        peftkit.get_peft_model(grouped, peftkit.HiraConfig(r=2, target_modules=["0"]))
    assert not any("hira" in n for n, _ in grouped.named_parameters())  # rolled back
    with pytest.raises(ValueError, match="not supported by HiraModel"):
        peftkit.get_peft_model(tiny_llama(), peftkit.HiraConfig(r=2, target_modules=["input_layernorm"]))


def test_config_validation():
    with pytest.raises(ValueError, match="positive integer"):
        peftkit.HiraConfig(r=0)
    with pytest.raises(ValueError, match=r"rank_pattern\['v_proj'\]"):
        peftkit.HiraConfig(rank_pattern={"v_proj": -1})
    with pytest.raises(ValueError, match="hira_dropout"):
        peftkit.HiraConfig(hira_dropout=1.5)
    with pytest.raises(ValueError, match="init_weights must be True, False, None or 'gaussian'"):
        peftkit.HiraConfig(init_weights="kaiming")
    with pytest.raises(ValueError, match="layers_to_transform"):
        peftkit.HiraConfig(target_modules=".*q_proj", layers_to_transform=[0])


def test_adapter_for_another_base_and_truncated_file_are_clear_errors(tmp_path):
    model = peftkit.get_peft_model(tiny_llama(), peftkit.HiraConfig(**QV))
    model.save_pretrained(tmp_path / "ok")
    other = tiny_llama(hidden_size=48, num_attention_heads=4, intermediate_size=96)
    with pytest.raises(AdapterLoadError, match="Size mismatch"):
        peftkit.PeftModel.from_pretrained(other, tmp_path / "ok")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((tmp_path / "ok" / "adapter_config.json").read_text())
    data = (tmp_path / "ok" / "adapter_model.safetensors").read_bytes()
    (broken / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterLoadError, match="adapter_model.safetensors"):
        peftkit.PeftModel.from_pretrained(tiny_llama(), broken)


def test_classes_at_peft_s_paths():
    from peftkit.tuners import hira

    for name in ("HiraConfig", "HiraModel", "HiraLayer", "Linear", "Embedding", "Conv2d", "Conv3d"):
        assert hasattr(hira, name) and hasattr(peft.tuners.hira, name), name
    assert peftkit.HiraConfig is hira.HiraConfig and peftkit.HiraModel is hira.HiraModel
    assert peftkit.PeftType.HIRA.value == "HIRA"


# ----- bitsandbytes layers (quantized on the CPU; see tests/quantization/helpers.py) -----
BNB_CASES = {
    "nf4": dict(bits=4, quant_type="nf4"),
    "fp4-double-quant": dict(bits=4, quant_type="fp4", double_quant=True),
    "int8": dict(bits=8),
}


@pytest.mark.parametrize("case", list(BNB_CASES), ids=list(BNB_CASES))
def test_bitsandbytes_layers_equal_peft(case):
    """Forward and merged forward equal peft's on the same quantized base (1e-5); rank_pattern applies to
    these layers as in peft; unmerging gives back the base outputs (exactly, but for double quantization,
    where W0 is requantized: 1e-3; peft divides by 1 + B A there and is further off)."""
    from tests.quantization.helpers import quantizable_llama, quantize_linears

    base = quantize_linears(quantizable_llama(), **BNB_CASES[case])
    config = {"r": 4, "target_modules": ["q_proj", "v_proj", "down_proj"], "rank_pattern": {"down_proj": 2}}
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.HiraConfig(**config))
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.HiraConfig(**config))
    perturb_adapter_weights(theirs, scale=0.3)
    result = ours.load_state_dict(
        {k: v for k, v in theirs.state_dict().items() if "hira_" in k}, strict=False
    )
    assert not result.unexpected_keys
    layer = ours.base_model.model.model.layers[0].mlp.down_proj
    assert type(layer).__module__ == "peftkit.tuners.hira.bnb"
    assert type(layer).__name__ == ("Linear4bit" if BNB_CASES[case]["bits"] == 4 else "Linear8bitLt")
    assert layer.hira_A["default"].shape == (2, 128)  # rank_pattern, as peft applies it here
    # train mode (no dropout): bitsandbytes keeps its plain 4-bit format, which peft reads
    theirs.train(), ours.train()
    inputs = llama_inputs()
    with torch.no_grad():
        with ours.disable_adapter():
            plain = ours(**inputs).logits
        unmerged = ours(**inputs).logits
        checks.assert_close(unmerged, theirs(**inputs).logits, 1e-5, "bitsandbytes forward")
        assert (unmerged - plain).abs().max() > 1e-2
        theirs.merge_adapter()
        with pytest.warns(PeftWarning, match="rounded to the quantization grid"):
            ours.merge_adapter()
        checks.assert_close(ours(**inputs).logits, theirs(**inputs).logits, 1e-5, "bitsandbytes merged")
        ours.unmerge_adapter()
        atol = 1e-3 if BNB_CASES[case].get("double_quant") else 0.0
        checks.assert_close(ours(**inputs).logits, unmerged, atol, "bitsandbytes unmerged")
        with ours.disable_adapter():
            checks.assert_close(ours(**inputs).logits, plain, atol, "bitsandbytes base after unmerge")


def test_bitsandbytes_helpers_round_trip():
    """tuners/_bnb.py: a dequantized weight requantized is the same quantized weight (nf4 and int8)."""
    from tests.quantization.helpers import quantizable_llama, quantize_linears

    from peftkit.tuners._bnb import dequantized_weight, is_bnb_layer, requantized_weight

    for bits in (4, 8):
        layer = quantize_linears(quantizable_llama(), bits=bits).model.layers[0].self_attn.q_proj
        assert is_bnb_layer(layer) and not is_bnb_layer(torch.nn.Linear(2, 2))
        dense = dequantized_weight(layer)
        assert dense.shape == (64, 64) and dense.is_floating_point()
        layer.weight = requantized_weight(layer, dense)
        assert torch.equal(dequantized_weight(layer), dense), bits


def test_mixed_model_refuses_hira_as_peft_does():
    for lib in (peft, peftkit):
        with pytest.raises(ValueError, match="not compatible with the `PeftMixedModel`"):
            lib.PeftMixedModel(tiny_llama(), lib.HiraConfig(**QV))
