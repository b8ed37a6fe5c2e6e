"""VeRA against peft: the shared projections are bit-identical for a given key, files move both ways
(with and without saved projections) with the same logits, same names, merge/unmerge."""

import copy

import peft
import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import conv_net, llama_inputs, perturb_adapter_weights, tiny_gpt2, tiny_llama
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case

import peftkit

METHOD = "VeraConfig"
QV = {"r": 4, "target_modules": ["q_proj", "v_proj"]}

CASES = {
    "llama_q_v": Case(tiny_llama, QV),
    "llama_q_v_no_saved_projection": Case(
        tiny_llama, {**QV, "save_projection": False, "projection_prng_key": 7}
    ),
    "llama_defaults": Case(tiny_llama, {"r": 8}, task_type="CAUSAL_LM"),
    "gpt2_conv1d_defaults": Case(tiny_gpt2, {"r": 4}, task_type="CAUSAL_LM"),
    "llama_mixed_dims_one_layer": Case(
        tiny_llama, {"r": 4, "target_modules": ["q_proj", "v_proj", "down_proj"], "layers_to_transform": [1]}
    ),
    "llama_bias_vera_only": Case(
        lambda: tiny_llama(attention_bias=True), {**QV, "bias": "vera_only", "init_weights": False}
    ),
}


# a trained bias (bias="vera_only") is not undone by disabling the adapter, so that case is left out here
NO_BIAS = {name: case for name, case in CASES.items() if "bias" not in case.config}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v",
        merge=NO_BIAS,
        mixed_batch=None,  # adapters of other ranks (tested below)
        default_targets="TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING",
    )
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("autocast", [True, False])
@pytest.mark.parametrize("key", [0, 5, 123456789])
def test_projections_are_bit_identical_to_peft(key, autocast, dtype):
    kwargs = {"r": 4, "target_modules": ["q_proj", "down_proj"], "projection_prng_key": key}
    base = tiny_llama().to(dtype)
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.VeraConfig(**kwargs), autocast_adapter_dtype=autocast
    )
    ours = peftkit.get_peft_model(
        copy.deepcopy(base), peftkit.VeraConfig(**kwargs), autocast_adapter_dtype=autocast
    )
    for name in ("vera_A", "vera_B"):
        expected, actual = (
            getattr(theirs.base_model, name)["default"],
            getattr(ours.base_model, name)["default"],
        )
        assert actual.dtype == expected.dtype and torch.equal(actual, expected), name
    layer = ours.base_model.model.model.layers[0].mlp.down_proj
    assert layer.vera_A is ours.base_model.vera_A  # shared, not copied


def test_file_holds_projections_only_with_save_projection(tmp_path):
    base = tiny_llama()
    for save in (True, False):
        model = peftkit.get_peft_model(copy.deepcopy(base), peftkit.VeraConfig(**QV, save_projection=save))
        model.save_pretrained(tmp_path / str(save))
        keys = set(load_file(tmp_path / str(save) / "adapter_model.safetensors"))
        assert ({"base_model.vera_A", "base_model.vera_B"} <= keys) is save
        layer_keys = keys - {"base_model.vera_A", "base_model.vera_B"}
        # the layers' references to the shared projections are not saved
        assert not any("vera_A" in k or "vera_B" in k for k in layer_keys)


def test_saved_projections_win_over_the_key(tmp_path):
    """A file with projections loads them, whatever the PRNG would draw (e.g. on another system)."""
    base = tiny_llama()
    model = peftkit.get_peft_model(copy.deepcopy(base), peftkit.VeraConfig(**QV))
    perturb_adapter_weights(model)
    with torch.no_grad():
        model.base_model.vera_A["default"].mul_(2.0)  # the layers share it
    model.save_pretrained(tmp_path)
    inputs = llama_inputs()
    for loader in (peftkit.PeftModel, peft.PeftModel):
        loaded = loader.from_pretrained(copy.deepcopy(base), tmp_path)
        assert torch.equal(loaded.base_model.vera_A["default"], model.base_model.vera_A["default"])
        with torch.no_grad():
            checks.assert_close(
                loaded(**inputs).logits, model(**inputs).logits, checks.ROUNDTRIP_ATOL, "loaded"
            )


def test_adapters_share_key_and_save_projection():
    model = peftkit.get_peft_model(tiny_llama(), peftkit.VeraConfig(**QV, projection_prng_key=3))
    model.add_adapter("second", peftkit.VeraConfig(**QV, projection_prng_key=3, d_initial=0.5))
    assert torch.equal(model.base_model.vera_A["second"], model.base_model.vera_A["default"])
    with pytest.raises(ValueError, match="PRNG initialisation key must be the same"):
        model.add_adapter("third", peftkit.VeraConfig(**QV, projection_prng_key=4))
    with pytest.warns(UserWarning, match="save_projection=False"):
        config = peftkit.VeraConfig(**QV, projection_prng_key=3, save_projection=False)
    with pytest.raises(ValueError, match="saved for all adapters or none"):
        model.add_adapter("fourth", config)
    assert sorted(model.peft_config) == ["default", "second"]
    assert sorted(model.base_model.vera_A) == ["default", "second"]  # failed adds leave nothing behind
    model.delete_adapter("second")
    assert sorted(model.base_model.vera_A) == ["default"]


def test_only_linear_layers():
    with pytest.raises(ValueError, match="No layers types compatible with VeRA"):
        peftkit.get_peft_model(conv_net(), peftkit.VeraConfig(r=2, target_modules=["emb", "conv2d"]))


def test_config_validation():
    with pytest.raises(ValueError, match="positive integer"):
        peftkit.VeraConfig(r=0)
    with pytest.raises(ValueError, match="layers_to_transform` must also be specified"):
        peftkit.VeraConfig(layers_pattern="layers")


def test_mixed_batch_gives_each_sample_its_adapter():
    """peft 0.21 ignores `adapter_names` for VeRA; peftkit applies each sample's adapter (or none)."""
    model = peftkit.get_peft_model(tiny_llama(), peftkit.VeraConfig(**QV))
    model.add_adapter("second", peftkit.VeraConfig(**QV))
    model.base_model.set_adapter(["default", "second"])
    perturb_adapter_weights(model, scale=0.5)
    model.eval()
    inputs = llama_inputs(batch=3)
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=["second", "__base__", "default"]).logits
        model.set_adapter("second")
        row0 = model(**inputs).logits[0]
        model.set_adapter("default")
        row2 = model(**inputs).logits[2]
        with model.disable_adapter():
            row1 = model(**inputs).logits[1]
    checks.assert_close(mixed, torch.stack([row0, row1, row2]), checks.BASE_ATOL, "mixed batch")


def test_second_adapter_with_its_projections_moves_both_ways(tmp_path):
    """A non-default adapter's projections are saved in its sub-folder as `base_model.vera_A/B` and load
    into that adapter's entry in either library."""
    base = tiny_llama()
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.VeraConfig(**QV))
    ours.add_adapter("second", peftkit.VeraConfig(**QV))
    ours.base_model.set_adapter(["default", "second"])
    perturb_adapter_weights(ours)
    with torch.no_grad():
        ours.base_model.vera_A["second"].mul_(3.0)  # differs from what the key would draw
    back = checks.check_second_adapter_moves_both_ways(base, ours, tmp_path)
    assert torch.equal(back.base_model.vera_A["second"], ours.base_model.vera_A["second"])
