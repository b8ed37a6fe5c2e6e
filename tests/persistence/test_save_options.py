"""save_pretrained / from_pretrained / load_adapter options, each checked against what peft does."""

from __future__ import annotations

import copy
import json
import warnings

import peft
import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_llama, tiny_llama_seq_cls
from tests.persistence.helpers import ATOL, file_layout, file_tensors, fresh, max_diff, read_config, save_both

import peftkit
from peftkit.utils.warnings import PeftWarning


def _logits(model):
    with torch.no_grad():
        return model(**llama_inputs()).logits


def _two_adapter_pair():
    """peft and peftkit models with adapters "default" (q, v) and "other" (k, r=4), same weights."""
    base = tiny_llama()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(target_modules=["q_proj", "v_proj"]))
    theirs.add_adapter("other", peft.LoraConfig(target_modules=["k_proj"], r=4, lora_alpha=6))
    ours = peftkit.get_peft_model(
        copy.deepcopy(base), peftkit.LoraConfig(target_modules=["q_proj", "v_proj"])
    )
    ours.add_adapter("other", peftkit.LoraConfig(target_modules=["k_proj"], r=4, lora_alpha=6))
    for name, param in theirs.named_parameters():
        param.requires_grad_("lora_" in name)
    perturb_adapter_weights(theirs)
    assert not ours.load_state_dict(theirs.state_dict(), strict=True).missing_keys
    return base, theirs.eval(), ours.eval()


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_two_adapters_sub_folder_layout_both_ways(tmp_path):
    base, theirs, ours = _two_adapter_pair()
    theirs.save_pretrained(tmp_path / "p")
    ours.save_pretrained(tmp_path / "k")
    assert _files(tmp_path / "k") == _files(tmp_path / "p")
    assert "other/adapter_model.safetensors" in _files(tmp_path / "k")
    theirs.set_adapter("other")
    reference = _logits(theirs)
    for loader, folder in ((peftkit.PeftModel, tmp_path / "p"), (peft.PeftModel, tmp_path / "k")):
        model = loader.from_pretrained(fresh(base), folder)
        model.load_adapter(folder / "other", "other")
        model.set_adapter("other")
        assert max_diff(_logits(model), reference) <= ATOL
        # the sub-folder also loads on its own, via `subfolder=`
        alone = loader.from_pretrained(fresh(base), folder, subfolder="other")
        assert max_diff(_logits(alone), reference) <= ATOL


def test_selected_adapters_saves_only_those(tmp_path):
    _, theirs, ours = _two_adapter_pair()
    theirs.save_pretrained(tmp_path / "p", selected_adapters=["other"])
    ours.save_pretrained(tmp_path / "k", selected_adapters=["other"])
    assert _files(tmp_path / "k") == _files(tmp_path / "p")
    assert not (tmp_path / "k" / "adapter_model.safetensors").exists()
    assert file_layout(tmp_path / "k" / "other") == file_layout(tmp_path / "p" / "other")
    with pytest.raises(ValueError, match="nope"):
        ours.save_pretrained(tmp_path / "x", selected_adapters=["nope"])


def test_bin_format_both_ways(tmp_path):
    base, theirs, _ours, peft_dir, kit_dir = save_both(
        tmp_path, tiny_llama, {"target_modules": ["q_proj", "v_proj"]}, "CAUSAL_LM", safe_serialization=False
    )
    assert (kit_dir / "adapter_model.bin").exists() and not (kit_dir / "adapter_model.safetensors").exists()
    reference = _logits(theirs)
    assert max_diff(_logits(peftkit.PeftModel.from_pretrained(fresh(base), peft_dir)), reference) <= ATOL
    assert max_diff(_logits(peft.PeftModel.from_pretrained(fresh(base), kit_dir)), reference) <= ATOL


def test_bin_read_with_weights_only(tmp_path, monkeypatch):
    base, _theirs, _, peft_dir, _ = save_both(
        tmp_path, tiny_llama, {"target_modules": ["q_proj"]}, "CAUSAL_LM", safe_serialization=False
    )
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    peftkit.PeftModel.from_pretrained(fresh(base), peft_dir)
    assert seen == [True]


def test_safetensors_preferred_over_bin(tmp_path):
    base, theirs, _, peft_dir, _ = save_both(
        tmp_path, tiny_llama, {"target_modules": ["q_proj"]}, "CAUSAL_LM"
    )
    wrong = {k: torch.zeros_like(v) for k, v in file_tensors(peft_dir).items()}
    torch.save(wrong, peft_dir / "adapter_model.bin")  # a stale .bin beside the real file
    loaded = peftkit.PeftModel.from_pretrained(fresh(base), peft_dir)
    assert max_diff(_logits(loaded), _logits(theirs)) <= ATOL


def test_switching_format_removes_the_stale_file(tmp_path):
    _, _, ours, _, kit_dir = save_both(tmp_path, tiny_llama, {"target_modules": ["q_proj"]}, "CAUSAL_LM")
    ours.save_pretrained(kit_dir, safe_serialization=False)
    assert (kit_dir / "adapter_model.bin").exists() and not (kit_dir / "adapter_model.safetensors").exists()


@pytest.mark.parametrize(
    "targets", [["q_proj"], ["embed_tokens", "q_proj"], ["lm_head", "q_proj"], ["embed_tokens", "lm_head"]]
)
@pytest.mark.parametrize("save_embedding_layers", ["auto", True, False])
def test_save_embedding_layers_same_keys_as_peft(tmp_path, targets, save_embedding_layers):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, _, _, peft_dir, kit_dir = save_both(
            tmp_path,
            tiny_llama,
            {"target_modules": targets},
            "CAUSAL_LM",
            save_embedding_layers=save_embedding_layers,
        )
    assert file_layout(kit_dir) == file_layout(peft_dir)


def test_resized_vocab_saves_embeddings_like_peft(tmp_path):
    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    base.name_or_path = base.config._name_or_path = str(tmp_path / "base")
    base.resize_token_embeddings(136, mean_resizing=False)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(target_modules=["q_proj"]))
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(target_modules=["q_proj"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.save_pretrained(tmp_path / "p")
        ours.save_pretrained(tmp_path / "k")
    layout = file_layout(tmp_path / "k")
    assert layout == file_layout(tmp_path / "p")
    assert layout["base_model.model.model.embed_tokens.weight"][0] == (136, 32)


def test_auto_mapping_written_like_peft_without_task_type(tmp_path):
    _, _, _, peft_dir, kit_dir = save_both(tmp_path, tiny_llama, {"target_modules": ["q_proj"]}, None)
    assert read_config(kit_dir)["auto_mapping"] == read_config(peft_dir)["auto_mapping"]
    assert read_config(kit_dir)["auto_mapping"]["base_model_class"] == "LlamaForCausalLM"


def test_peftkit_version_in_safetensors_metadata_only(tmp_path):
    from safetensors import safe_open

    _, _, _, _, kit_dir = save_both(tmp_path, tiny_llama, {"target_modules": ["q_proj"]}, "CAUSAL_LM")
    with safe_open(str(kit_dir / "adapter_model.safetensors"), framework="pt") as f:
        assert f.metadata()["peftkit_version"] == peftkit.__version__
    assert "peftkit" not in json.dumps(read_config(kit_dir))


def test_model_card_names_library_and_base(tmp_path):
    base = tiny_llama()
    base.name_or_path = "org/base-model"
    ours = peftkit.get_peft_model(base, peftkit.LoraConfig(target_modules=["q_proj"], task_type="CAUSAL_LM"))
    ours.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "library_name: peft" in card and 'base_model: "org/base-model"' in card
    assert "base_model:adapter:org/base-model" in card


def test_config_with_unknown_keys_warns_and_loads(tmp_path):
    base, theirs, _, peft_dir, _ = save_both(
        tmp_path, tiny_llama, {"target_modules": ["q_proj"]}, "CAUSAL_LM"
    )
    config = read_config(peft_dir)
    config["shiny_new_option"] = 3
    (peft_dir / "adapter_config.json").write_text(json.dumps(config))
    with pytest.warns(PeftWarning, match="shiny_new_option"):
        loaded = peftkit.PeftModel.from_pretrained(fresh(base), peft_dir)
    assert max_diff(_logits(loaded), _logits(theirs)) <= ATOL


def test_is_main_process_false_writes_nothing(tmp_path):
    ours = peftkit.get_peft_model(tiny_llama(), peftkit.LoraConfig(target_modules=["q_proj"]))
    ours.save_pretrained(tmp_path / "out", is_main_process=False)
    assert not (tmp_path / "out").exists()


def test_weight_conversion_needs_the_initial_folder(tmp_path):
    # the conversion itself is tested in tests/lora_family/test_conversion.py
    ours = peftkit.get_peft_model(tiny_llama(), peftkit.LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="path_initial_model_for_weight_conversion"):
        ours.save_pretrained(tmp_path, path_initial_model_for_weight_conversion=str(tmp_path / "init"))


def test_state_dict_functions_match_peft():
    _, theirs, ours = _two_adapter_pair()
    for name in ("default", "other"):
        mine = peftkit.get_peft_model_state_dict(ours, adapter_name=name)
        reference = peft.get_peft_model_state_dict(theirs, adapter_name=name)
        assert sorted(mine) == sorted(reference)
        assert all(torch.equal(mine[k], reference[k]) for k in mine)


def test_set_state_dict_returns_missing_and_unexpected():
    _, theirs, ours = _two_adapter_pair()
    state = peft.get_peft_model_state_dict(theirs)
    dropped = sorted(state)[0]
    state.pop(dropped)
    state["base_model.model.no_such_module.lora_A.weight"] = torch.zeros(2, 2)
    with pytest.warns(PeftWarning, match="unfilled"):
        result = peftkit.set_peft_model_state_dict(ours, state)
    reference = peft.set_peft_model_state_dict(theirs, dict(state))
    assert (
        result.unexpected_keys
        == reference.unexpected_keys
        == ["base_model.model.no_such_module.lora_A.weight"]
    )
    assert result.missing_keys == [dropped.replace(".weight", ".default.weight")]
    # peft's missing keys list every other model key too; its adapter keys are ours
    assert result.missing_keys == [k for k in reference.missing_keys if "lora_" in k and ".default." in k]


def test_load_peft_weights_with_key_mapping_like_peft(tmp_path):
    _, _, _, peft_dir, _ = save_both(tmp_path, tiny_llama, {"target_modules": ["q_proj"]}, "CAUSAL_LM")
    mapping = {r"^model\.layers\.(\d+)": r"model.blocks.\1"}
    mine = peftkit.load_peft_weights(str(peft_dir), key_mapping=mapping)
    reference = peft.load_peft_weights(str(peft_dir), key_mapping=mapping)
    assert sorted(mine) == sorted(reference)
    assert any(".blocks." in k for k in mine)


def test_from_pretrained_key_mapping_renames_before_loading(tmp_path):
    base, theirs, _, peft_dir, _ = save_both(
        tmp_path, tiny_llama, {"target_modules": ["q_proj"]}, "CAUSAL_LM"
    )
    renamed = {k.replace(".layers.", ".blocks."): v for k, v in file_tensors(peft_dir).items()}
    from safetensors.torch import save_file

    save_file(renamed, str(peft_dir / "adapter_model.safetensors"))
    loaded = peftkit.PeftModel.from_pretrained(fresh(base), peft_dir, key_mapping={r"\.blocks\.": ".layers."})
    assert max_diff(_logits(loaded), _logits(theirs)) <= ATOL


@pytest.mark.parametrize("is_trainable", [True, False])
def test_load_adapter_into_existing_model_and_trainability(tmp_path, is_trainable):
    base, theirs, _, peft_dir, _ = save_both(
        tmp_path, tiny_llama_seq_cls, {"target_modules": ["q_proj"]}, "SEQ_CLS"
    )
    ours = peftkit.get_peft_model(
        fresh(base), peftkit.LoraConfig(target_modules=["v_proj"], task_type="SEQ_CLS")
    )
    reference = peft.get_peft_model(
        fresh(base), peft.LoraConfig(target_modules=["v_proj"], task_type="SEQ_CLS")
    )
    result = ours.load_adapter(peft_dir, "extra", is_trainable=is_trainable)
    reference.load_adapter(str(peft_dir), "extra", is_trainable=is_trainable)
    assert not result.missing_keys and not result.unexpected_keys
    # as in peft: the loaded adapter (lora and classifier copy) is trainable or not as asked, even inactive
    trainable = sorted(n for n, p in ours.named_parameters() if p.requires_grad)
    assert trainable == sorted(n for n, p in reference.named_parameters() if p.requires_grad)
    assert any(".extra." in n for n in trainable) == is_trainable
    assert ours.training == reference.training
    ours.set_adapter("extra")
    assert max_diff(_logits(ours.eval()), _logits(theirs)) <= ATOL


def test_unknown_kwargs_are_named_not_silently_dropped(tmp_path):
    base, _, _, peft_dir, _ = save_both(tmp_path, tiny_llama, {"target_modules": ["q_proj"]}, "CAUSAL_LM")
    with pytest.warns(PeftWarning, match="revison"):
        peftkit.PeftModel.from_pretrained(fresh(base), peft_dir, revison="main")


def test_low_cpu_mem_usage_places_adapter_beside_base_in_its_dtype(tmp_path):
    base, _, _, peft_dir, _ = save_both(tmp_path, tiny_llama, {"target_modules": ["q_proj"]}, "CAUSAL_LM")
    half = fresh(base).to(torch.bfloat16)
    for autocast in (True, False):
        ours = peftkit.PeftModel.from_pretrained(
            copy.deepcopy(half), peft_dir, low_cpu_mem_usage=True, autocast_adapter_dtype=autocast
        )
        theirs = peft.PeftModel.from_pretrained(
            copy.deepcopy(half), str(peft_dir), low_cpu_mem_usage=True, autocast_adapter_dtype=autocast
        )
        dtypes = {n: p.dtype for n, p in ours.named_parameters() if "lora_" in n}
        assert dtypes == {n: p.dtype for n, p in theirs.named_parameters() if "lora_" in n}


def test_low_cpu_mem_usage_adopts_the_file_tensors_without_copying(tmp_path, monkeypatch):
    from peftkit.utils import weights_io

    base, theirs, _, peft_dir, _ = save_both(
        tmp_path, tiny_llama, {"target_modules": "all-linear"}, "CAUSAL_LM"
    )
    read = {}
    real = weights_io.load_weights_file

    def capture(*args, **kwargs):
        read.update(real(*args, **kwargs))
        return read

    monkeypatch.setattr(weights_io, "load_weights_file", capture)
    ours = peftkit.PeftModel.from_pretrained(fresh(base), peft_dir, low_cpu_mem_usage=True)
    file_ptrs = {t.data_ptr() for t in read.values()}
    adapter = {n: p for n, p in ours.named_parameters() if "lora_" in n}
    assert len(adapter) == len(read)
    # each adapter parameter IS a tensor read from the file: one copy of the adapter in memory
    assert all(p.data_ptr() in file_ptrs for p in adapter.values())
    assert max_diff(_logits(ours), _logits(theirs)) <= ATOL


def test_load_adapter_with_low_cpu_mem_usage(tmp_path):
    base, theirs, _, peft_dir, _ = save_both(
        tmp_path, tiny_llama, {"target_modules": ["q_proj"], "use_dora": True}, "CAUSAL_LM"
    )
    ours = peftkit.get_peft_model(fresh(base), peftkit.LoraConfig(target_modules=["q_proj"], use_dora=True))
    ours.load_adapter(peft_dir, "second", low_cpu_mem_usage=True)
    assert not [n for n, p in ours.named_parameters() if p.is_meta]
    ours.set_adapter("second")
    assert max_diff(_logits(ours.eval()), _logits(theirs)) <= ATOL
