"""PVeRA against peft: the shared projections bit-identical for a key, files move both ways (with and
without saved projections) with the same logits and names, sampling exactly as peft samples (the mean in
eval, per-layer seeded noise in training), merge/unmerge, and adapters of any ranks and targets side by side."""

import copy

import peft
import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import conv_net, llama_inputs, perturb_adapter_weights, tiny_gpt2, tiny_llama
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case

import peftkit
from peftkit.utils.warnings import PeftWarning

METHOD = "PveraConfig"
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
    "llama_bias_pvera_only": Case(
        lambda: tiny_llama(attention_bias=True), {**QV, "bias": "pvera_only", "init_weights": False}
    ),
    "llama_sampling_at_inference": Case(tiny_llama, {**QV, "sample_at_inference": True, "generator_seed": 3}),
}
# a trained bias is not undone by disabling; a sampling adapter's merged (mean) output is not its output
MERGEABLE = {name: case for name, case in CASES.items() if "bias" not in name and "sampling" not in name}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v",
        merge=MERGEABLE,
        default_targets="TRANSFORMERS_MODELS_TO_PVERA_TARGET_MODULES_MAPPING",
    )
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("autocast", [True, False])
@pytest.mark.parametrize("key", [0, 123456789])
def test_seeded_adapter_and_projections_are_bit_identical_to_peft_s(key, autocast, dtype):
    kwargs = {
        "r": 4,
        "target_modules": ["q_proj", "down_proj"],
        "projection_prng_key": key,
        "init_weights": False,
    }
    base = tiny_llama().to(dtype)
    built = []
    for lib in (peft, peftkit):
        torch.manual_seed(5)
        config = lib.PveraConfig(**kwargs)
        built.append(lib.get_peft_model(copy.deepcopy(base), config, autocast_adapter_dtype=autocast))
    theirs, ours = (model.state_dict() for model in built)
    assert sorted(ours) == sorted(theirs)
    assert [
        k for k in theirs if theirs[k].dtype != ours[k].dtype or not torch.equal(theirs[k], ours[k])
    ] == []
    assert ours["base_model.pvera_A.default"].shape == (8, 64)  # 2r rows, the widest input
    layer = built[1].base_model.model.model.layers[0].mlp.down_proj
    assert layer.pvera_A is built[1].base_model.pvera_A  # shared, not copied


def _pair(config: dict, seed: int = 0):
    """peft and peftkit models with the same perturbed adapter."""
    base = tiny_llama()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.PveraConfig(**config))
    perturb_adapter_weights(theirs, seed=seed, scale=0.5)
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.PveraConfig(**config))
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def test_training_samples_with_each_layer_s_seeded_generator_as_peft():
    theirs, ours = _pair({**QV, "generator_seed": 11})
    inputs = llama_inputs()
    theirs.train(), ours.train()
    with torch.no_grad():
        for step in range(3):  # the generators advance alike
            expected, actual = theirs(**inputs).logits, ours(**inputs).logits
            checks.assert_close(actual, expected, 1e-6, f"training forward {step}")
        ours.eval()
        mean = ours(**inputs).logits
        assert (mean - expected).abs().max() > 1e-3  # training sampled, eval does not
        checks.assert_close(ours(**inputs).logits, mean, 0.0, "eval is deterministic")


def test_training_without_a_seed_draws_from_torch_s_global_rng_as_peft():
    theirs, ours = _pair(QV)
    inputs = llama_inputs()
    theirs.train(), ours.train()
    with torch.no_grad():
        torch.manual_seed(4)
        expected = theirs(**inputs).logits
        torch.manual_seed(4)
        actual = ours(**inputs).logits
        checks.assert_close(actual, expected, 1e-6, "global-RNG sampling")
        assert (ours(**inputs).logits - actual).abs().max() > 1e-3  # a new draw


def test_sample_at_inference_samples_in_eval_and_merging_keeps_the_mean():
    _, ours = _pair({**QV, "sample_at_inference": True, "generator_seed": 2})
    _, mean_model = _pair(QV)
    inputs = llama_inputs()
    ours.eval(), mean_model.eval()
    with torch.no_grad():
        first, second = ours(**inputs).logits, ours(**inputs).logits
        assert (first - second).abs().max() > 1e-3
        with pytest.warns(PeftWarning, match="merged adapter is its mean"):
            ours.merge_adapter()
        checks.assert_close(
            ours(**inputs).logits, mean_model(**inputs).logits, checks.MERGE_ATOL, "merged mean"
        )


def test_adding_an_adapter_does_not_reset_the_sampling_of_another():
    _, ours = _pair({**QV, "generator_seed": 8})
    _, reference = _pair({**QV, "generator_seed": 8})
    inputs = llama_inputs()
    ours.train(), reference.train()
    with torch.no_grad():
        ours(**inputs), reference(**inputs)
        ours.add_adapter("other", peftkit.PveraConfig(**QV, generator_seed=8))
        checks.assert_close(ours(**inputs).logits, reference(**inputs).logits, 0.0, "second draw")


def test_adapters_of_other_ranks_and_targets_live_side_by_side(tmp_path):
    """peft draws the projections once, for the first adapter, and a second adapter of a lower rank fails in
    forward (a larger layer fails on creation); each peftkit adapter has projections of its own."""
    base = tiny_llama()
    model = peftkit.get_peft_model(copy.deepcopy(base), peftkit.PveraConfig(**QV))
    second = {"r": 2, "target_modules": ["down_proj", "q_proj"]}
    model.add_adapter("second", peftkit.PveraConfig(**second))
    assert model.base_model.pvera_A["second"].shape == (4, 64) and model.base_model.pvera_A[
        "default"
    ].shape == (8, 32)
    model.base_model.set_adapter(["default", "second"])
    perturb_adapter_weights(model)
    model.set_adapter("second")
    model.eval().save_pretrained(tmp_path)
    inputs = llama_inputs()
    with torch.no_grad():
        expected = model(**inputs).logits
        for loader in (peft.PeftModel, peftkit.PeftModel):  # as the only adapter, peft sizes them right
            loaded = loader.from_pretrained(copy.deepcopy(base), tmp_path / "second").eval()
            checks.assert_close(loaded(**inputs).logits, expected, checks.ROUNDTRIP_ATOL, str(loader))
    model.delete_adapter("default")
    assert list(model.base_model.pvera_A) == ["second"]


def test_file_holds_projections_only_with_save_projection(tmp_path):
    base = tiny_llama()
    for save in (True, False):
        model = peftkit.get_peft_model(copy.deepcopy(base), peftkit.PveraConfig(**QV, save_projection=save))
        model.save_pretrained(tmp_path / str(save))
        keys = set(load_file(tmp_path / str(save) / "adapter_model.safetensors"))
        assert ({"base_model.pvera_A", "base_model.pvera_B"} <= keys) is save
        assert not any(
            "pvera_A" in k or "pvera_B" in k for k in keys - {"base_model.pvera_A", "base_model.pvera_B"}
        )


def test_adapters_share_key_and_save_projection():
    model = peftkit.get_peft_model(tiny_llama(), peftkit.PveraConfig(**QV, projection_prng_key=3))
    with pytest.raises(ValueError, match="PRNG initialisation key must be the same"):
        model.add_adapter("other", peftkit.PveraConfig(**QV, projection_prng_key=4))
    with pytest.warns(PeftWarning, match="save_projection=False"):
        config = peftkit.PveraConfig(**QV, projection_prng_key=3, save_projection=False)
    with pytest.raises(ValueError, match="saved for all adapters or none"):
        model.add_adapter("other", config)
    assert list(model.peft_config) == ["default"] and list(model.base_model.pvera_A) == ["default"]


def test_only_linear_layers():
    with pytest.raises(ValueError, match="No layers types compatible with PVeRA"):
        peftkit.get_peft_model(conv_net(), peftkit.PveraConfig(r=2, target_modules=["emb", "conv2d"]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"r": 0}, "positive integer"),
        ({"pvera_dropout": -0.1}, "pvera_dropout"),
        ({"bias": "vera_only"}, "bias must be one of"),
        ({"layers_pattern": "layers"}, "layers_to_transform` must also be specified"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        peftkit.PveraConfig(**kwargs)
