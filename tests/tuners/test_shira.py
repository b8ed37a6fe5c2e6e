"""SHiRA against peft: the same sparse positions from a seed or a custom mask function, files (which hold
the positions) move both ways with the same logits, gradients and merges equal peft's, and SHiRA takes
part in mixed models."""

import copy
import warnings

import peft
import pytest
import torch
from safetensors.torch import load_file
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

METHOD = "ShiraConfig"
QV = {"r": 2, "target_modules": ["q_proj", "v_proj"]}

CASES = {
    "llama_q_v": Case(tiny_llama, QV),
    "llama_defaults": Case(tiny_llama, {"r": 1}, task_type="CAUSAL_LM"),
    "llama_seed_mlp_random_init": Case(
        tiny_llama,
        {
            "r": 3,
            "target_modules": ["v_proj", "up_proj", "down_proj"],
            "random_seed": 7,
            "init_weights": False,
        },
    ),
    "llama_seq_cls": Case(tiny_llama_seq_cls, {**QV, "random_seed": 1}, task_type="SEQ_CLS"),
}

NUMERIC = ["llama_q_v", "llama_seed_mlp_random_init"]
globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v",
        merge="llama_q_v",
        low_cpu_mem_usage="llama_seed_mlp_random_init",
        gradients=NUMERIC,
        merged_as_peft=NUMERIC,
        several_adapters="llama_seed_mlp_random_init",
        default_targets="TRANSFORMERS_MODELS_TO_SHIRA_TARGET_MODULES_MAPPING",
        config_fields=False,  # tested below, with the default mask function
    )
)


def every_other_row_mask(base_layer, r, **kwargs):
    """A custom mask: r * (in + out) entries, filling rows 0, 2, 4, ... from the left."""
    out_features, in_features = base_layer.weight.shape
    mask = torch.zeros(
        out_features, in_features, dtype=base_layer.weight.dtype, device=base_layer.weight.device
    )
    flat = mask[::2].reshape(-1)
    flat[: r * (in_features + out_features)] = 1
    mask[::2] = flat.view_as(mask[::2])
    return mask


def _layers(model):
    return {n: m for n, m in model.named_modules() if hasattr(m, "shira_indices")}


@pytest.mark.parametrize("seed", [None, 11])
def test_random_positions_equal_peft_s(seed):
    base = tiny_llama()
    config = {"r": 2, "target_modules": ["q_proj", "down_proj"], "random_seed": seed}
    theirs = _layers(peft.get_peft_model(copy.deepcopy(base), peft.ShiraConfig(**config)))
    ours = _layers(peftkit.get_peft_model(copy.deepcopy(base), peftkit.ShiraConfig(**config)))
    assert theirs.keys() == ours.keys() and len(ours) == 4
    for name, layer in ours.items():
        indices = layer.shira_indices["default"]
        assert indices.dtype == torch.int32 and indices.shape == (
            2,
            2 * (layer.in_features + layer.out_features),
        )
        assert torch.equal(indices, theirs[name].shira_indices["default"]), name


def _custom(lib):
    config = lib.ShiraConfig(r=2, target_modules=["q_proj", "v_proj"], mask_type="every_other_row")
    config.mask_fn = every_other_row_mask
    return config


def test_custom_mask_function_gives_peft_s_positions_and_files_carry_them(tmp_path):
    base = tiny_llama()
    with pytest.warns(UserWarning, match="mask_fn"):
        theirs = peft.get_peft_model(copy.deepcopy(base), _custom(peft))
    with pytest.warns(peftkit.PeftWarning, match="config.mask_fn = my_mask_fn"):
        ours = peftkit.get_peft_model(copy.deepcopy(base), _custom(peftkit))
    for name, layer in _layers(ours).items():
        assert torch.equal(layer.shira_indices["default"], _layers(theirs)[name].shira_indices["default"])
    perturb_adapter_weights(ours)
    ours.save_pretrained(tmp_path / "ours")
    saved = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    key = "base_model.model.model.layers.0.self_attn.q_proj.shira_indices"
    assert torch.equal(
        saved[key], _layers(ours)["base_model.model.model.layers.0.self_attn.q_proj"].shira_indices["default"]
    )
    # loading needs no mask function: the positions come from the file, in either library
    inputs = llama_inputs()
    with torch.no_grad():
        expected = ours.eval()(**inputs).logits
        for lib in (peft, peftkit):
            loaded = lib.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
            checks.assert_close(
                loaded(**inputs).logits, expected, checks.ROUNDTRIP_ATOL, f"{lib.__name__} load"
            )
        # and peft's file of a custom mask, loaded trainable (no mask function anywhere), in peftkit
        perturb_adapter_weights(theirs, seed=2)
        theirs.save_pretrained(tmp_path / "theirs")
        loaded = peftkit.PeftModel.from_pretrained(
            copy.deepcopy(base), tmp_path / "theirs", is_trainable=True
        )
        checks.assert_close(
            loaded.eval()(**inputs).logits,
            theirs.eval()(**inputs).logits,
            checks.ROUNDTRIP_ATOL,
            "peft's file",
        )


def test_a_mask_type_without_a_function_is_a_clear_error_at_use():
    with pytest.warns(peftkit.PeftWarning, match="not a built-in mask"):
        config = peftkit.ShiraConfig(r=2, target_modules=["q_proj"], mask_type="magnitude")
    model = peftkit.get_peft_model(tiny_llama(), config)
    with pytest.raises(ValueError, match="has no mask.*config.mask_fn.*shira_indices"):
        model(**llama_inputs())
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error"
        )  # a loaded config (inference_mode) does not warn: its file has positions
        peftkit.ShiraConfig(r=2, mask_type="magnitude", inference_mode=True)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="more shira params .*1024.*smaller r"):
        peftkit.get_peft_model(tiny_llama(), peftkit.ShiraConfig(r=17, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="positive integer"):
        peftkit.ShiraConfig(r=0)
    with pytest.raises(ValueError, match="`random_seed` must be an integer or None"):
        peftkit.ShiraConfig(random_seed="7")
    with pytest.raises(TypeError, match="not supported by ShiraModel.*torch.nn.Linear"):
        peftkit.get_peft_model(conv_net(), peftkit.ShiraConfig(r=1, target_modules=["conv2d"]))
    with pytest.raises(TypeError, match="not supported by ShiraModel"):
        peftkit.get_peft_model(tiny_gpt2(), peftkit.ShiraConfig(r=1, target_modules=["c_attn"]))
    with pytest.warns(peftkit.PeftWarning, match="not a built-in mask"):
        wrong_count = _custom(peftkit)
    wrong_count.mask_fn = lambda base_layer, r, **kwargs: torch.ones_like(base_layer.weight)
    with pytest.raises(ValueError, match="marks 1024 entries.*128 values"):
        peftkit.get_peft_model(tiny_llama(), wrong_count)


def test_set_scale_scales_the_update():
    model = peftkit.get_peft_model(tiny_llama(), peftkit.ShiraConfig(**QV))
    perturb_adapter_weights(model)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    before = layer.get_delta_weight("default").to_dense()
    layer.set_scale("default", 0.5)
    layer.set_scale("absent", 3.0)  # a layer without the adapter ignores it, as in peft
    assert torch.allclose(layer.get_delta_weight("default").to_dense(), before * 0.5)
    assert before.count_nonzero() == 2 * (32 + 32)


def test_mixed_model_accepts_shira_beside_lora_as_peft_does():
    base = tiny_llama()
    shira = {"r": 2, "target_modules": ["q_proj", "v_proj"], "random_seed": 3}
    lora = {"r": 4, "target_modules": ["q_proj", "k_proj"], "init_lora_weights": False}
    models = []
    for lib in (peft, peftkit):
        model = lib.PeftMixedModel(copy.deepcopy(base), lib.ShiraConfig(**shira), "sparse")
        model.add_adapter("low_rank", lib.LoraConfig(**lora))
        model.set_adapter(["sparse", "low_rank"])
        models.append(model.eval())
    theirs, ours = models
    perturb_adapter_weights(theirs)
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not missing and not unexpected
    inputs = llama_inputs()
    with torch.no_grad():
        expected = theirs(**inputs).logits
        assert (expected - base(**inputs).logits).abs().max() > 1e-3
        checks.assert_close(ours(**inputs).logits, expected, checks.ROUNDTRIP_ATOL, "mixed SHiRA + LoRA")
        merged = ours.merge_and_unload()
        checks.assert_close(merged(**inputs).logits, expected, checks.MERGE_ATOL, "mixed merge_and_unload")
    # SHiRA acts on the plain weight: added over another method's adapter it is refused, as in peft
    model = peftkit.PeftMixedModel(copy.deepcopy(base), peftkit.LoraConfig(**lora), "low_rank")
    with pytest.raises(ValueError, match="SHiRA does not support nested base layers"):
        model.add_adapter("sparse", peftkit.ShiraConfig(**shira))


def test_config_fields_and_defaults_are_peft_s():
    checks.check_config_fields(METHOD)
    assert peftkit.ShiraConfig().mask_fn is peftkit.tuners.shira.mask_functions.random_mask
