"""`save_pretrained(path_initial_model_for_weight_conversion=...)`: PiSSA / OLoRA -> plain LoRA.

The converted adapter (rank 2r) loads on the ORIGINAL base model, in peft and in peftkit, and reproduces
the trained model's logits within 1e-4.
"""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import llama_inputs, tiny_llama
from tests.lora_family.helpers import max_diff, train_steps

import peftkit

TOL = 1e-4
TARGETS = ["q_proj", "v_proj", "down_proj"]


def _trained(init, tmp_path, **extra):
    base = tiny_llama()
    inputs = llama_inputs()
    model = peftkit.get_peft_model(
        copy.deepcopy(base),
        peftkit.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=init, **extra),
    )
    model.save_pretrained(tmp_path / "init")
    train_steps(model, inputs)
    return base, inputs, model


@pytest.mark.parametrize("init", ["pissa", "olora", "pissa_niter_2"])
@pytest.mark.parametrize("use_rslora", [False, True])
def test_converted_adapter_loads_on_original_base_in_peft(init, use_rslora, tmp_path):
    import peft

    base, inputs, model = _trained(init, tmp_path, use_rslora=use_rslora)
    expected = model(**inputs).logits
    assert max_diff(expected, base(**inputs).logits) > 1e-3  # training changed the model
    model.save_pretrained(tmp_path / "lora", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    assert max_diff(model(**inputs).logits, expected) == 0.0  # the in-memory model is untouched

    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["init_lora_weights"] is True
    assert config["lora_alpha"] == pytest.approx(8 * (2**0.5 if use_rslora else 2))
    weights = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    assert weights["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (8, 32)
    assert weights["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].shape == (32, 8)

    for lib in (peft, peftkit):
        loaded = lib.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "lora")
        assert max_diff(loaded(**inputs).logits, expected) < TOL, lib.__name__


def test_conversion_matches_peft_file(tmp_path):
    """Same trained tensors and initial folder -> the same converted file as peft writes."""
    import peft

    base, _inputs, ours = _trained("olora", tmp_path)
    theirs = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights="olora"),
    )
    theirs.load_state_dict(ours.state_dict())
    theirs.peft_config["default"].init_lora_weights = True  # peft wants the initial folder to say so
    ours.save_pretrained(tmp_path / "ours", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    init_cfg = tmp_path / "init" / "adapter_config.json"
    init_cfg.write_text(init_cfg.read_text().replace('"olora"', "true"))
    theirs.peft_config["default"].init_lora_weights = "olora"
    theirs.save_pretrained(
        tmp_path / "theirs", path_initial_model_for_weight_conversion=str(tmp_path / "init")
    )
    a, b = (
        load_file(tmp_path / "ours" / "adapter_model.safetensors"),
        load_file(tmp_path / "theirs" / "adapter_model.safetensors"),
    )
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ca = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    cb = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    for field in ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "init_lora_weights"):
        assert ca[field] == cb[field], field


def test_patterns_double_and_dora_magnitude_is_kept(tmp_path):
    import peft

    base, inputs, model = _trained(
        "pissa", tmp_path, rank_pattern={"down_proj": 2}, alpha_pattern={"down_proj": 3}, use_dora=True
    )
    expected = model(**inputs).logits
    model.save_pretrained(tmp_path / "lora", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["rank_pattern"] == {"down_proj": 4} and config["alpha_pattern"] == {"down_proj": 6}
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "lora")
    assert max_diff(loaded(**inputs).logits, expected) < TOL


def test_rslora_with_patterns_converts(tmp_path):
    """peft refuses rsLoRA + rank/alpha patterns; peftkit scales every alpha by sqrt(2)."""
    base, inputs, model = _trained("pissa", tmp_path, use_rslora=True, rank_pattern={"down_proj": 2})
    expected = model(**inputs).logits
    model.save_pretrained(tmp_path / "lora", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    loaded = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "lora")
    assert max_diff(loaded(**inputs).logits, expected) < TOL


def test_clear_errors(tmp_path):
    _base, _inputs, model = _trained("pissa", tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        model.save_pretrained(tmp_path / "x", path_initial_model_for_weight_conversion=str(tmp_path / "nope"))
    other = peftkit.get_peft_model(tiny_llama(), peftkit.LoraConfig(r=2, target_modules=["q_proj"]))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="not the same adapter|does not match"):
        model.save_pretrained(
            tmp_path / "y", path_initial_model_for_weight_conversion=str(tmp_path / "other")
        )
    model.add_adapter("second", peftkit.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="selected_adapters"):
        model.save_pretrained(tmp_path / "z", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    assert not (tmp_path / "z").exists() or not any((tmp_path / "z").iterdir())
