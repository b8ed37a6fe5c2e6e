"""RoAd against peft: the three variants' rotations, files both ways, merge (R W, R b) and unmerge (R^-1),
several adapters rotating in turn, mixed-adapter batches, bitsandbytes layers, gradients."""

import copy
import warnings

import peft
import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_gpt2, tiny_llama, tiny_llama_seq_cls
from tests.quantization.helpers import quantizable_llama, quantize_linears
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case

import peftkit
from peftkit.tuners.road.rotation import rotate, rotation_matrix

METHOD = "RoadConfig"
QV = {"group_size": 8, "target_modules": ["q_proj", "v_proj"]}

CASES = {
    "llama_q_v_road_1": Case(tiny_llama, QV),
    "llama_defaults_road_2": Case(tiny_llama, {"variant": "road_2", "group_size": 16}, task_type="CAUSAL_LM"),
    "llama_mlp_road_4_bias": Case(
        lambda: tiny_llama(attention_bias=True, mlp_bias=True),
        {"variant": "road_4", "group_size": 8, "target_modules": ["q_proj", "up_proj", "down_proj"]},
    ),
    "llama_seq_cls": Case(tiny_llama_seq_cls, {**QV, "variant": "road_2"}, task_type="SEQ_CLS"),
}


# unload() keeps the trained classifier head (modules_to_save), so the sequence-classification case is left out
MERGE_CASES = {name: case for name, case in CASES.items() if case.task_type != "SEQ_CLS"}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v_road_1",
        merge=MERGE_CASES,
        bf16="llama_mlp_road_4_bias",
        mixed_batch="llama_mlp_road_4_bias",
        gradients=["llama_q_v_road_1", "llama_mlp_road_4_bias"],
        default_targets="TRANSFORMERS_MODELS_TO_ROAD_TARGET_MODULES_MAPPING",
    )
)


def _two_adapter_pair():
    """peft and peftkit with the same two adapters (other variants), peft's perturbed weights copied."""
    base = tiny_llama(attention_bias=True)
    models = []
    for lib in (peft, peftkit):
        model = lib.get_peft_model(copy.deepcopy(base), lib.RoadConfig(**QV))
        model.add_adapter(
            "second", lib.RoadConfig(variant="road_4", group_size=16, target_modules=["v_proj", "o_proj"])
        )
        model.base_model.set_adapter(["default", "second"])
        models.append(model)
    theirs, ours = models
    perturb_adapter_weights(theirs, scale=0.3)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return base, theirs.eval(), ours.eval()


def test_mixed_batch_equals_peft_s():
    """peft 0.21 routes `adapter_names` for RoAd too: both give each sample the same rotation."""
    _, theirs, ours = _two_adapter_pair()
    inputs = llama_inputs(batch=3)
    names = ["second", "__base__", "default"]
    with torch.no_grad():
        expected = theirs(**inputs, adapter_names=names).logits
        checks.assert_close(ours(**inputs, adapter_names=names).logits, expected, 1e-6, "mixed batch")


def test_active_adapters_rotate_in_turn_and_merge_like_peft():
    """With both adapters active, v_proj's output is rotated by "default" then "second", as in peft;
    merging both and unmerging gives the same outputs back."""
    base, theirs, ours = _two_adapter_pair()
    inputs = llama_inputs()
    with torch.no_grad():
        expected = theirs(**inputs).logits
        checks.assert_close(ours(**inputs).logits, expected, 1e-6, "two active adapters")
        ours.merge_adapter(["default", "second"])
        checks.assert_close(ours(**inputs).logits, expected, checks.MERGE_ATOL, "merged")
        ours.unmerge_adapter()
        checks.assert_close(ours(**inputs).logits, expected, checks.MERGE_ATOL, "unmerged")
        checks.assert_close(
            ours.unload()(**inputs).logits, base(**inputs).logits, checks.BASE_ATOL, "unloaded"
        )


@pytest.mark.parametrize("variant", ["road_1", "road_2", "road_4"])
def test_random_init_and_rotation_matrix_equal_peft(variant):
    """Same torch seed: the same angles and scales (init_weights=False); the rotation the layers merge with
    is the one their forward applies."""
    config = {
        "variant": variant,
        "group_size": 8,
        "target_modules": ["q_proj", "down_proj"],
        "init_weights": False,
    }
    base = tiny_llama()
    torch.manual_seed(4)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.RoadConfig(**config))
    torch.manual_seed(4)
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.RoadConfig(**config))
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    layer = ours.base_model.model.model.layers[0].mlp.down_proj
    theta, alpha = layer.road_theta["default"], layer.road_alpha["default"]
    assert theta.abs().max() > 0 and (alpha - 1).abs().max() > 0
    vectors = torch.randn(5, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        matrix = rotation_matrix(variant, 8, theta, alpha)
        checks.assert_close(vectors @ matrix.T, rotate(vectors, variant, 8, theta, alpha), 1e-6, "R v")


def test_unmergeable_shapes_and_layers_are_clear_errors():
    with pytest.raises(ValueError, match=r"divisible by group_size \(64\).*16"):
        peftkit.get_peft_model(tiny_llama(), peftkit.RoadConfig(target_modules=["v_proj"]))
    with pytest.raises(TypeError, match="not supported by RoadModel.*torch.nn.Linear"):
        peftkit.get_peft_model(tiny_gpt2(), peftkit.RoadConfig(group_size=8, target_modules=["c_attn"]))
    with pytest.raises(ValueError, match="road_1, road_2 or road_4"):
        peftkit.RoadConfig(variant="road_3")
    for size in (0, 7, -2):
        with pytest.raises(ValueError, match="group_size"):
            peftkit.RoadConfig(group_size=size)


def test_mixed_models_refuse_road_as_peft_does():
    for lib in (peft, peftkit):
        with pytest.raises(ValueError, match="not compatible with the `PeftMixedModel`"):
            lib.PeftMixedModel(tiny_llama(), lib.RoadConfig(**QV))


@pytest.mark.parametrize("quantization", [{"bits": 4, "quant_type": "nf4"}, {"bits": 8}], ids=["nf4", "int8"])
def test_bitsandbytes_layers_equal_peft(quantization):
    """On the same quantized base: forward, the requantized merge and the unmerge give peft's logits."""
    base = quantize_linears(quantizable_llama(attention_bias=True), **quantization)
    config = {"variant": "road_2", "group_size": 16, "target_modules": ["q_proj", "down_proj"]}
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.RoadConfig(**config))
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.RoadConfig(**config))
    perturb_adapter_weights(theirs, scale=0.3)
    adapter = {k: v for k, v in theirs.state_dict().items() if ".road_" in k}
    assert len(adapter) == 8 and not ours.load_state_dict(adapter, strict=False).unexpected_keys
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    expected_cls = "Linear4bit" if quantization["bits"] == 4 else "Linear8bitLt"
    assert type(layer).__name__ == expected_cls and type(layer).__module__ == "peftkit.tuners.road.bnb"
    inputs = llama_inputs()
    # train mode: bitsandbytes keeps the plain 4-bit format (its CPU eval kernel repacks it)
    theirs.train(), ours.train()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unmerged = ours(**inputs).logits
        checks.assert_close(unmerged, theirs(**inputs).logits, 1e-6, "quantized forward")
        for model in (theirs, ours):
            model.merge_adapter()
        merged = ours(**inputs).logits
        checks.assert_close(merged, theirs(**inputs).logits, 1e-6, "requantized merge")
        assert (merged - unmerged).abs().max() > 0  # rounded to the grid
        for model in (theirs, ours):
            model.unmerge_adapter()
        checks.assert_close(ours(**inputs).logits, theirs(**inputs).logits, 1e-6, "requantized unmerge")
    with pytest.warns(UserWarning, match="requantizes"):
        ours.merge_adapter()
