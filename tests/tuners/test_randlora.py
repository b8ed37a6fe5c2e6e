"""RandLoRA against peft: the shared bases are bit-identical for a key (dense, sparse, very sparse), files
move both ways with the same logits, same names and gradients, merge/unmerge/disable, several adapters
with other ranks and targets, and the bitsandbytes layers."""

import copy
import warnings

import peft
import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_gpt2, tiny_llama, tiny_llama_seq_cls
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case

import peftkit

METHOD = "RandLoraConfig"
QV = {"r": 4, "target_modules": ["q_proj", "v_proj"]}

CASES = {
    "llama_q_v": Case(tiny_llama, QV),
    "llama_sparse_mixed_shapes_random_init": Case(
        tiny_llama,
        {"r": 5, "target_modules": ["q_proj", "down_proj", "up_proj"], "sparse": True, "init_weights": False},
    ),
    "llama_very_sparse_no_saved_projection": Case(
        tiny_llama,
        {"r": 3, "target_modules": ["k_proj", "down_proj"], "very_sparse": True, "save_projection": False}
        | {"projection_prng_key": 9},
    ),
    "gpt2_conv1d_defaults": Case(tiny_gpt2, {"r": 8, "randlora_alpha": 16}, task_type="CAUSAL_LM"),
    "llama_bias_randlora_only": Case(
        lambda: tiny_llama(attention_bias=True), {**QV, "bias": "randlora_only", "init_weights": False}
    ),
    "llama_seq_cls": Case(tiny_llama_seq_cls, QV, task_type="SEQ_CLS"),
}


# a trained bias is not undone by disabling the adapter, and unload keeps a trained classification head
# (modules_to_save): those cases are left out here
MERGE_CASES = {
    name: case for name, case in CASES.items() if "bias" not in case.config and case.task_type != "SEQ_CLS"
}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v",
        merge=MERGE_CASES,
        training="llama_sparse_mixed_shapes_random_init",
        training_lr=1e-3,
        bf16="llama_sparse_mixed_shapes_random_init",
        mixed_batch="llama_sparse_mixed_shapes_random_init",
        low_cpu_mem_usage=["llama_q_v", "llama_very_sparse_no_saved_projection"],
        gradients=checks.ALL,  # peft's backward is a custom autograd function, peftkit's its own
        default_targets="TRANSFORMERS_MODELS_TO_RANDLORA_TARGET_MODULES_MAPPING",
    )
)


@pytest.mark.parametrize(
    "kind", [{}, {"sparse": True}, {"very_sparse": True}], ids=["dense", "sparse", "very"]
)
@pytest.mark.parametrize(("dtype", "autocast"), [(torch.float32, True), (torch.bfloat16, False)])
def test_everything_built_is_bit_identical_to_peft(kind, dtype, autocast):
    """Same key, same torch seed, same base: the bases and the diagonals are peft's, bit for bit."""
    kwargs = {
        "r": 3,
        "target_modules": ["q_proj", "down_proj"],
        "projection_prng_key": 4,
        "init_weights": False,
    }
    base = tiny_llama().to(dtype)
    models = []
    for lib in (peft, peftkit):
        torch.manual_seed(2)
        config = getattr(lib, METHOD)(**kwargs, **kind)
        models.append(lib.get_peft_model(copy.deepcopy(base), config, autocast_adapter_dtype=autocast))
    theirs, ours = (m.state_dict() for m in models)
    assert sorted(ours) == sorted(theirs)
    for key, expected in theirs.items():
        assert ours[key].dtype == expected.dtype and torch.equal(ours[key], expected), key
    layer = models[1].base_model.model.model.layers[0].mlp.down_proj
    assert layer.randlora_A is models[1].base_model.randlora_A  # shared, not copied


def test_file_holds_bases_only_with_save_projection(tmp_path):
    """As peft writes them: `base_model.randlora_A/B` and a copy under every layer (peft warns about
    missing keys when the layer copies are left out)."""
    base = tiny_llama()
    for save in (True, False):
        model = peftkit.get_peft_model(
            copy.deepcopy(base), peftkit.RandLoraConfig(**QV, save_projection=save)
        )
        model.save_pretrained(tmp_path / str(save))
        keys = set(load_file(tmp_path / str(save) / "adapter_model.safetensors"))
        assert ({"base_model.randlora_A", "base_model.randlora_B"} <= keys) is save
        assert sum(k.endswith(".randlora_B") for k in keys) == (5 if save else 0)
        assert sum(k.endswith(".randlora_lambda") for k in keys) == 4


def test_second_adapter_with_other_rank_and_targets_moves_both_ways(tmp_path):
    """A second adapter with another rank and other layers gets bases of its own (peft shares the first
    adapter's and cannot run a different rank); same rank and targets load into peft with the same logits."""
    base = tiny_llama()
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.RandLoraConfig(**QV))
    ours.add_adapter("other_rank", peftkit.RandLoraConfig(r=6, target_modules=["o_proj", "up_proj"]))
    ours.add_adapter("second", peftkit.RandLoraConfig(**QV))
    assert ours.base_model.randlora_B["other_rank"].shape == (64, 6, 6)  # (max dim, ceil(32 / 6), r)
    assert torch.equal(ours.base_model.randlora_A["second"], ours.base_model.randlora_A["default"])
    ours.base_model.set_adapter(["default", "other_rank", "second"])
    perturb_adapter_weights(ours)
    inputs = llama_inputs()
    with torch.no_grad():
        ours.eval().set_adapter("other_rank")
        assert (ours(**inputs).logits - base(**inputs).logits).abs().max() > 1e-3
    ours.delete_adapter("other_rank")
    assert sorted(ours.base_model.randlora_A) == ["default", "second"]
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours")
    theirs.load_adapter(tmp_path / "ours" / "second", adapter_name="second")
    back = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours")
    back.load_adapter(tmp_path / "ours" / "second", adapter_name="second")
    for model in (ours, theirs, back):
        model.set_adapter("second")
    with torch.no_grad():
        expected = ours(**inputs).logits
        checks.assert_close(theirs(**inputs).logits, expected, checks.ROUNDTRIP_ATOL, "peft loads our second")
        checks.assert_close(back(**inputs).logits, expected, checks.ROUNDTRIP_ATOL, "and peftkit")


def test_adapter_with_other_targets_loads_beside_another(tmp_path):
    """A file holds its own adapter's bases only: loaded next to an adapter on other layers, it needs no
    copy of its bases under those layers (in peftkit, or in peft)."""
    base = tiny_llama()
    saved = peftkit.get_peft_model(
        copy.deepcopy(base), peftkit.RandLoraConfig(r=4, target_modules=["o_proj"])
    )
    perturb_adapter_weights(saved)
    saved.eval().save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert not any("q_proj" in k for k in keys)
    inputs = llama_inputs()
    with torch.no_grad():
        expected = saved(**inputs).logits
    for lib in (peftkit, peft):
        model = lib.get_peft_model(copy.deepcopy(base), getattr(lib, METHOD)(r=4, target_modules=["q_proj"]))
        with warnings.catch_warnings():
            warnings.simplefilter("error", peftkit.PeftWarning)
            model.load_adapter(tmp_path, adapter_name="other_layers")
        model.set_adapter("other_layers")
        with torch.no_grad():
            checks.assert_close(model.eval()(**inputs).logits, expected, checks.ROUNDTRIP_ATOL, lib.__name__)


def test_adapters_share_key_and_save_projection():
    model = peftkit.get_peft_model(tiny_llama(), peftkit.RandLoraConfig(**QV, projection_prng_key=3))
    with pytest.raises(ValueError, match="PRNG initialisation key must be the same"):
        model.add_adapter("other", peftkit.RandLoraConfig(**QV, projection_prng_key=4))
    with pytest.warns(UserWarning, match="save_projection=False"):
        config = peftkit.RandLoraConfig(**QV, projection_prng_key=3, save_projection=False)
    with pytest.raises(ValueError, match="saved for all adapters or none"):
        model.add_adapter("other", config)
    assert sorted(model.base_model.randlora_A) == ["default"]  # failed adds leave nothing behind


def test_bases_too_small_for_a_layer_are_a_clear_error():
    model = peftkit.get_peft_model(tiny_llama(), peftkit.RandLoraConfig(**QV))
    layer = model.base_model.model.model.layers[0].mlp.down_proj  # 64 -> 32: the bases cover 32 x 32 only
    with pytest.raises(ValueError, match="do not fit this layer"):
        peftkit.tuners.randlora.Linear(
            layer,
            model.base_model.randlora_A,
            model.base_model.randlora_B,
            "default",
            model.peft_config["default"],
            r=4,
        )


def test_only_linear_layers():
    from tests.conftest import conv_net

    with pytest.raises(ValueError, match="No layers types compatible with RandLora"):
        peftkit.get_peft_model(conv_net(), peftkit.RandLoraConfig(r=2, target_modules=["emb", "conv2d"]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r": 0}, "`r` should be a positive integer"),
        ({"randlora_dropout": 1.0}, r"randlora_dropout must be in \[0, 1\)"),
        ({"bias": "lora_only"}, "bias must be one of"),
        ({"layers_pattern": "layers"}, "layers_to_transform` must also be specified"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        peftkit.RandLoraConfig(**kwargs)
