"""Issue 9: no silent wrong results, no lost or unsafe files. Each test asserts the error type and that the
message names the offending value."""

import copy
import os
import warnings

import pytest
import torch
from tests.conftest import conv_net, llama_inputs, perturb_adapter_weights, tiny_gpt2, tiny_llama

from peftkit import LoraConfig, PeftModel, get_peft_model
from peftkit.tuners.tuners_utils import BaseTunerLayer
from peftkit.utils.warnings import AdapterLoadError, PeftWarning


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


# ----- targets -----
def test_all_linear_never_wraps_adapter_layers_or_modules_to_save_copies():
    model = get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj"], modules_to_save=["lm_head"]))
    model.add_adapter("second", LoraConfig(target_modules="all-linear"))
    names = [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    assert not any(".lora_" in n or "modules_to_save" in n or "original_module" in n for n in names)
    assert not any(n.endswith("lm_head") for n in names)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert set(q_proj.lora_A) == {"default", "second"}  # the second adapter went onto the same layer


def test_add_adapter_matching_nothing_is_an_error_naming_targets():
    model = get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="qq_proj"):
        model.add_adapter("other", LoraConfig(target_modules=["qq_proj"]))


def test_modules_to_save_overlapping_targets_is_rejected_naming_it():
    with pytest.raises(ValueError, match="q_proj"):
        get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj"], modules_to_save=["q_proj"]))


# ----- task type and names -----
def test_invalid_task_type_lists_valid_ones():
    with pytest.raises(ValueError, match="CAUSAL_LM") as err:
        LoraConfig(task_type="causal")
    assert "'causal'" in str(err.value)


@pytest.mark.parametrize("name", ["a.b", "x/y", "..", "", "__base__"])
def test_adapter_names_are_validated_up_front(name):
    with pytest.raises(ValueError, match="dapter name|reserved") as err:
        get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj"]), adapter_name=name)
    assert repr(name) in str(err.value) or "__base__" in str(err.value)


# ----- loading onto the wrong base -----
def test_loading_onto_another_base_names_the_recorded_base(tmp_path):
    base = tiny_llama()
    base.config._name_or_path = "org/base-a"
    model = get_peft_model(base, LoraConfig(target_modules=["q_proj"]))
    model.save_pretrained(tmp_path)
    other = tiny_llama()
    other.config._name_or_path = "org/base-b"
    with pytest.warns(PeftWarning, match="org/base-a.*org/base-b"):
        PeftModel.from_pretrained(other, tmp_path)


def test_loading_onto_resized_vocab_names_key_shapes_and_cause(tmp_path):
    model = get_peft_model(tiny_llama(), LoraConfig(target_modules=["embed_tokens"]))
    model.save_pretrained(tmp_path)
    with pytest.raises(AdapterLoadError, match=r"embed_tokens.*\(8, 128\).*\(8, 130\)|resized embeddings"):
        PeftModel.from_pretrained(tiny_llama(vocab_size=130), tmp_path)


def test_missing_adapter_keys_are_an_error_by_default(tmp_path):
    from safetensors.torch import load_file, save_file

    model = get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(path)
    dropped = next(k for k in tensors if "v_proj.lora_A" in k)
    del tensors[dropped]
    save_file(tensors, path)
    with pytest.raises(AdapterLoadError, match="v_proj.lora_A"):
        PeftModel.from_pretrained(tiny_llama(), tmp_path)
    with pytest.warns(PeftWarning, match="v_proj.lora_A"):
        PeftModel.from_pretrained(tiny_llama(), tmp_path, allow_missing_keys=True)


# ----- numerics -----
def test_dora_on_zero_norm_rows_gives_no_nan():
    base = tiny_llama()
    with torch.no_grad():
        base.model.layers[0].self_attn.q_proj.weight[:3] = 0.0  # three all-zero output rows
    model = get_peft_model(copy.deepcopy(base), LoraConfig(target_modules=["q_proj"], use_dora=True))
    magnitude = (
        model.base_model.model.model.layers[0].self_attn.q_proj.lora_magnitude_vector["default"].weight
    )
    assert magnitude[:3].abs().max() <= 1e-12  # the rows' norm (clamped away from 0 so nothing divides by 0)
    inputs = llama_inputs()
    out = _logits(model, inputs)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, _logits(base, inputs), atol=1e-6, rtol=0)
    model.train()
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    model.eval()
    model.merge_adapter(safe_merge=True)
    assert torch.isfinite(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_conv1d_gpt2_half_precision_forward_backward(dtype):
    model = get_peft_model(
        tiny_gpt2().to(dtype), LoraConfig(target_modules=["c_attn", "c_proj"], use_dora=True)
    )
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)
    model.train()
    ids = torch.randint(0, 128, (2, 6))
    loss = model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad
    )


def test_unmerge_is_the_inverse_of_merge_in_half_precision():
    base = tiny_llama().to(torch.bfloat16)
    model = get_peft_model(copy.deepcopy(base), LoraConfig(target_modules="all-linear"))
    perturb_adapter_weights(model, scale=0.05)
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    before = [layer.base_layer.weight.detach().float().clone() for layer in layers]
    deltas = [layer.get_delta_weight("default").detach().float() for layer in layers]
    model.merge_adapter()
    model.unmerge_adapter()
    for layer, weight, delta in zip(layers, before, deltas):
        # the delta is computed in fp32; what is lost is the one bf16 rounding of the merged value
        bound = 2**-8 * (weight.abs() + delta.abs()) + 1e-30
        assert ((layer.base_layer.weight.float() - weight).abs() <= bound).all()


# ----- tied weights -----
def test_adapting_a_tied_embedding_warns_and_explains():
    with pytest.warns(
        PeftWarning, match=r"'model.embed_tokens' shares its weight with \['lm_head'\].*merging"
    ):
        get_peft_model(tiny_llama(tie_word_embeddings=True), LoraConfig(target_modules=["embed_tokens"]))
    with pytest.warns(PeftWarning, match=r"'lm_head' shares its weight.*modules_to_save copy"):
        get_peft_model(
            tiny_llama(tie_word_embeddings=True),
            LoraConfig(target_modules=["q_proj"], modules_to_save=["lm_head"]),
        )


def test_untied_embeddings_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", PeftWarning)
        get_peft_model(tiny_llama(tie_word_embeddings=False), LoraConfig(target_modules=["embed_tokens"]))


def _tie_warnings(make):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make()
    return [str(w.message) for w in caught if "shares its weight" in str(w.message)]


def test_ties_a_method_keeps_by_design_do_not_warn():
    from peftkit import TrainableTokensConfig

    # trainable tokens adapt the tied output head too, with the same rows
    assert not _tie_warnings(
        lambda: get_peft_model(
            tiny_llama(tie_word_embeddings=True), TrainableTokensConfig(token_indices=[1, 2])
        )
    )
    # replicated layers share their base weights by design (merging them is refused anyway)
    assert not _tie_warnings(
        lambda: get_peft_model(
            tiny_llama(), LoraConfig(target_modules=["q_proj"], layer_replication=[[0, 2], [1, 2]])
        )
    )
    # ... but a real tie next to replicated layers still warns
    warned = _tie_warnings(
        lambda: get_peft_model(
            tiny_llama(tie_word_embeddings=True),
            LoraConfig(target_modules=["embed_tokens"], layer_replication=[[0, 2]]),
        )
    )
    assert warned and "'model.embed_tokens' shares its weight with ['lm_head']" in warned[0]


# ----- saving -----
def test_zero_size_tensor_is_never_saved(tmp_path):
    model = get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj"]))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    layer.lora_A["default"].weight = torch.nn.Parameter(
        torch.empty(0)
    )  # what an un-gathered shard looks like
    with pytest.raises(ValueError, match=r"lora_A.*zero-size"):
        model.save_pretrained(tmp_path)
    assert not (tmp_path / "adapter_config.json").exists()


def test_shared_and_non_contiguous_tensors_save_and_load(tmp_path):
    model = get_peft_model(conv_net(), LoraConfig(target_modules=["lin", "conv1d"]))
    perturb_adapter_weights(model)
    lin, conv = model.base_model.model.lin, model.base_model.model.conv1d
    with torch.no_grad():
        lin.lora_B["default"].weight = torch.nn.Parameter(torch.randn(8, 8).t()[:, :8])  # a transposed view
    assert not lin.lora_B["default"].weight.is_contiguous()
    conv.lora_A["default"].weight = torch.nn.Parameter(conv.lora_A["default"].weight.data)  # fine on its own
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(conv_net(), tmp_path)
    ids = torch.randint(0, 20, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model.eval()(ids), atol=1e-6, rtol=0)


def test_only_main_process_writes(tmp_path):
    model = get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj"]))
    model.save_pretrained(tmp_path / "out", is_main_process=False)
    assert not (tmp_path / "out" / "adapter_config.json").exists()


# ----- security -----
def test_bin_can_be_refused_entirely(tmp_path):
    model = get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj"]))
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "adapter_model.bin").exists()
    with pytest.raises(AdapterLoadError, match="adapter_model.bin"):
        PeftModel.from_pretrained(tiny_llama(), tmp_path, allow_bin=False)
    PeftModel.from_pretrained(tiny_llama(), tmp_path)  # allowed by default, read with weights_only=True


def test_adapter_names_cannot_escape_the_save_folder(tmp_path):
    model = get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj"]))
    model.peft_config["../escape"] = model.peft_config["default"]  # bypass the up-front validation
    with pytest.raises(ValueError, match="outside"):
        model.save_pretrained(tmp_path / "out", selected_adapters=["../escape"])
    assert not os.path.exists(tmp_path / "escape")


def test_safe_merge_never_changes_base_weights_when_result_not_finite():
    model = get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj", "v_proj"]))
    v_proj = model.base_model.model.model.layers[1].self_attn.v_proj
    with torch.no_grad():
        v_proj.lora_A["default"].weight.fill_(1e30)
        v_proj.lora_B["default"].weight.fill_(1e30)
    before = v_proj.base_layer.weight.clone()
    with pytest.raises(ValueError, match="'default'"):
        model.merge_adapter(safe_merge=True)
    assert torch.equal(v_proj.base_layer.weight, before)
