"""VB-LoRA against peft: banks and logits bit-identical for a seed, files move both ways (also the compact
top-k files) with the same logits, same names and gradients, merge/unmerge/disable, several adapters."""

import copy

import peft
import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_gpt2, tiny_llama, tiny_llama_seq_cls
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case

import peftkit

METHOD = "VBLoRAConfig"
QV = {"r": 2, "num_vectors": 16, "vector_length": 8, "target_modules": ["q_proj", "v_proj"]}

CASES = {
    "llama_q_v": Case(tiny_llama, QV),
    "llama_top3_mlp": Case(
        tiny_llama,
        {
            "r": 3,
            "num_vectors": 10,
            "vector_length": 16,
            "topk": 3,
            "target_modules": ["q_proj", "down_proj"],
        },
    ),
    "llama_only_topk_saved_int16_indices": Case(
        tiny_llama,
        {"r": 2, "num_vectors": 300, "vector_length": 8, "target_modules": ["k_proj", "up_proj"]}
        | {"save_only_topk_weights": True},
    ),
    "gpt2_conv1d_defaults": Case(tiny_gpt2, {"num_vectors": 8, "vector_length": 16}, task_type="CAUSAL_LM"),
    "llama_bias_vblora_only": Case(
        lambda: tiny_llama(attention_bias=True), {**QV, "bias": "vblora_only", "save_only_topk_weights": True}
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
        training="llama_top3_mlp",
        bf16="llama_top3_mlp",
        mixed_batch="llama_top3_mlp",
        gradients=checks.ALL,
        default_targets="TRANSFORMERS_MODELS_TO_VBLORA_TARGET_MODULES_MAPPING",
    )
)


def test_low_cpu_mem_usage_load_of_a_top_k_file(tmp_path):
    """The logits rebuilt from a top-k file give the saved weights up to rounding (log, then softmax)."""
    base = tiny_llama()
    model = peftkit.get_peft_model(
        copy.deepcopy(base), peftkit.VBLoRAConfig(**QV, save_only_topk_weights=True)
    )
    perturb_adapter_weights(model)
    model.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, low_cpu_mem_usage=True)
    assert not any(t.is_meta for t in loaded.state_dict().values())
    inputs = llama_inputs()
    with torch.no_grad():
        expected = model.eval()(**inputs).logits
        checks.assert_close(
            loaded(**inputs).logits, expected, checks.ROUNDTRIP_ATOL, "low_cpu_mem_usage top-k"
        )


@pytest.mark.parametrize(("dtype", "autocast"), [(torch.float32, True), (torch.bfloat16, False)])
def test_bank_and_logits_are_bit_identical_to_peft(dtype, autocast):
    """Same torch seed, same base: the bank and every layer's logits are peft's, bit for bit."""
    base = tiny_llama().to(dtype)
    models = []
    for lib in (peft, peftkit):
        torch.manual_seed(3)
        config = getattr(lib, METHOD)(**CASES["llama_top3_mlp"].config)
        models.append(lib.get_peft_model(copy.deepcopy(base), config, autocast_adapter_dtype=autocast))
    theirs, ours = (m.state_dict() for m in models)
    assert sorted(ours) == sorted(theirs)
    for key, expected in theirs.items():
        assert ours[key].dtype == expected.dtype and torch.equal(ours[key], expected), key
    layer = models[1].base_model.model.model.layers[1].mlp.down_proj
    assert layer.vblora_vector_bank is models[1].base_model.vblora_vector_bank  # shared, not copied


def test_top_k_file_holds_indices_and_weights_and_cannot_train(tmp_path):
    base = tiny_llama()
    model = peftkit.get_peft_model(
        copy.deepcopy(base), peftkit.VBLoRAConfig(**QV, save_only_topk_weights=True)
    )
    perturb_adapter_weights(model)
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert not any(k.endswith(("vblora_logits_A", "vblora_logits_B")) for k in tensors)
    indices = tensors["base_model.model.model.layers.0.self_attn.q_proj.vblora_logits_A_topk_indices"]
    assert indices.dtype == torch.uint8 and indices.shape == (2, 4, 2)  # (r, in / length, topk), N < 256
    assert [k for k in tensors if "vector_bank" in k] == ["base_model.vblora_vector_bank"]  # once
    loaded = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, is_trainable=True)
    inputs = llama_inputs()
    with torch.no_grad():
        expected = model.eval()(**inputs).logits
        checks.assert_close(loaded.eval()(**inputs).logits, expected, checks.ROUNDTRIP_ATOL, "top-k load")
        loaded.merge_adapter()
        checks.assert_close(loaded(**inputs).logits, expected, checks.MERGE_ATOL, "top-k merged")
        loaded.unmerge_adapter()
    with pytest.raises(RuntimeError, match="save_only_topk_weights"):
        loaded.train()(**inputs)


def test_second_adapter_with_other_bank_and_targets_moves_both_ways(tmp_path):
    """Each adapter has its own bank (other size, other rank, other layers); the second's file (in its
    sub-folder) loads into either library with the same logits."""
    base = tiny_llama()
    second = {
        "r": 3,
        "num_vectors": 5,
        "vector_length": 16,
        "topk": 1,
        "target_modules": ["v_proj", "o_proj"],
    }
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.VBLoRAConfig(**QV))
    ours.add_adapter("second", peftkit.VBLoRAConfig(**second))
    ours.base_model.set_adapter(["default", "second"])
    perturb_adapter_weights(ours)
    assert ours.base_model.vblora_vector_bank["second"].shape == (5, 16)
    checks.check_second_adapter_moves_both_ways(base, ours, tmp_path)
    ours.delete_adapter("second")
    assert sorted(ours.base_model.vblora_vector_bank) == ["default"]


def test_savable_parameter_count_is_peft_s(capsys):
    for topk_only in (False, True):
        config = {**QV, "save_only_topk_weights": topk_only}
        for lib in (peft, peftkit):
            lib.get_peft_model(tiny_llama(), getattr(lib, METHOD)(**config)).print_savable_parameters()
        theirs, ours = capsys.readouterr().out.splitlines()
        assert ours == theirs and "VB-LoRA params to-be-saved" in ours


def test_vector_length_must_divide_the_layer():
    with pytest.raises(ValueError, match="`out_features` 16 must be divisible by `vector_length` 32"):
        peftkit.get_peft_model(tiny_llama(), peftkit.VBLoRAConfig(**{**QV, "vector_length": 32}))


def test_unsupported_layer_is_a_clear_error():
    from tests.conftest import conv_net

    with pytest.raises(ValueError, match="not supported by VBLoRAModel"):
        peftkit.get_peft_model(conv_net(), peftkit.VBLoRAConfig(**{**QV, "target_modules": ["emb"]}))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r": 0}, "`r` should be a positive integer"),
        ({"topk": 0}, "`topk` should be a positive integer"),
        ({"num_vectors": 4, "topk": 5}, r"`topk` \(5\) cannot exceed `num_vectors` \(4\)"),
        ({"vblora_dropout": -0.1}, r"vblora_dropout must be in \[0, 1\)"),
        ({"bias": "lora_only"}, "bias must be one of"),
        ({"layers_pattern": "layers"}, "layers_to_transform` must also be specified"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        peftkit.VBLoRAConfig(**kwargs)
