"""Importing llama.cpp LoRA adapters (GGUF) as PEFT adapter folders; exact round trips for f32."""

from __future__ import annotations

import copy
import json

import gguf
import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import perturb_adapter_weights
from tests.integrations.gguf_llama import peft_logits, tiny_llama_for_gguf, write_llama_gguf

from peftkit import LoraConfig, PeftModel, get_peft_model
from peftkit.integrations.gguf import (
    GGUFConversionError,
    export_lora_to_gguf,
    import_lora_from_gguf,
    read_gguf_lora,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf-import")
    model = tiny_llama_for_gguf()
    write_llama_gguf(model, folder / "base.gguf")
    return model, folder


def _exported(model, folder, dtype="f32", **config):
    config = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear", **config}
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(**config))
    perturb_adapter_weights(peft_model, scale=0.05)
    peft_model.save_pretrained(folder / "adapter")
    export_lora_to_gguf(
        folder / "adapter", folder / "adapter.gguf", base=folder.parent / "base.gguf", dtype=dtype
    )
    return peft_model


def test_f32_round_trip_is_exact(tiny, tmp_path):
    model, folder = tiny
    work = folder / "exact"
    work.mkdir()
    peft_model = _exported(model, work)
    import_lora_from_gguf(work / "adapter.gguf", tmp_path / "back")
    original, back = (
        load_file(work / "adapter" / "adapter_model.safetensors"),
        load_file(tmp_path / "back" / "adapter_model.safetensors"),
    )
    assert sorted(original) == sorted(back) and all(torch.equal(original[k], back[k]) for k in original)
    config = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["rank_pattern"], config["peft_type"]) == (
        4,
        8,
        {},
        "LORA",
    )
    assert sorted(config["target_modules"]) == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]
    reloaded = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "back")
    assert torch.equal(peft_logits(reloaded), peft_logits(peft_model))


def test_peft_loads_the_imported_folder(tiny, tmp_path):
    import peft

    model, folder = tiny
    work = folder / "for-peft"
    work.mkdir()
    peft_model = _exported(model, work, target_modules=["q_proj", "k_proj"])
    import_lora_from_gguf(work / "adapter.gguf", tmp_path / "back")
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "back")
    assert (peft_logits(loaded) - peft_logits(peft_model)).abs().max() < 1e-6


def test_ranks_scales_and_partial_layers_survive_the_round_trip(tiny, tmp_path):
    model, folder = tiny
    work = folder / "patterns"
    work.mkdir()
    peft_model = _exported(
        model, work, r=8, lora_alpha=16, use_rslora=True, rank_pattern={"v_proj": 2}, alpha_pattern={"q_proj": 5},
        layers_to_transform=[1], target_modules=["q_proj", "v_proj", "down_proj"],
    )  # fmt: skip
    import_lora_from_gguf(work / "adapter.gguf", tmp_path / "back")
    config = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert config["target_modules"][0] == "model.layers.1.mlp.down_proj"  # layer 0 is not adapted: full names
    assert config["rank_pattern"] == {r"model\.layers\.1\.self_attn\.v_proj": 2}
    reloaded = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "back")
    assert (peft_logits(reloaded) - peft_logits(peft_model)).abs().max() < 1e-5  # scales folded, float32


def test_quantized_files_import_within_their_precision(tiny, tmp_path):
    model, folder = tiny
    work = folder / "q8"
    work.mkdir()
    peft_model = _exported(model, work, dtype="q8_0")
    import_lora_from_gguf(work / "adapter.gguf", tmp_path / "back")
    reloaded = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "back")
    delta = (peft_logits(peft_model) - peft_logits(model)).abs().max()
    assert (peft_logits(reloaded) - peft_logits(peft_model)).abs().max() < 0.02 * delta


def _without_head_counts(source, target, alpha=None):
    """The file as llama.cpp's own converter writes it: no head counts, no base model name."""
    lora = read_gguf_lora(source)
    writer = gguf.GGUFWriter(str(target), "llama")
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", lora.alpha if alpha is None else alpha)
    for name, (lora_a, lora_b) in lora.pairs.items():
        writer.add_tensor(name + ".lora_a", lora_a.numpy())
        writer.add_tensor(name + ".lora_b", lora_b.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_files_from_llama_cpps_converter_need_the_base_model(tiny, tmp_path):
    model, folder = tiny
    work = folder / "converter"
    work.mkdir()
    peft_model = _exported(model, work, target_modules=["q_proj", "k_proj"])
    _without_head_counts(work / "adapter.gguf", tmp_path / "plain.gguf")
    with pytest.raises(GGUFConversionError, match="does not record: pass the base model"):
        import_lora_from_gguf(tmp_path / "plain.gguf", tmp_path / "back")
    assert not (tmp_path / "back").exists()
    import_lora_from_gguf(tmp_path / "plain.gguf", tmp_path / "back", base=folder / "base.gguf")
    config = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(folder / "base.gguf")
    assert sorted(config["target_modules"]) == ["k_proj", "q_proj"]  # the base says there are 2 layers
    reloaded = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "back")
    assert torch.equal(peft_logits(reloaded), peft_logits(peft_model))


def test_a_file_without_alpha_scales_by_one(tiny, tmp_path):
    model, folder = tiny
    work = folder / "no-alpha"
    work.mkdir()
    _exported(model, work, r=4, lora_alpha=4, target_modules=["v_proj"])  # scale 1 already
    _without_head_counts(work / "adapter.gguf", tmp_path / "zero.gguf", alpha=0.0)
    import_lora_from_gguf(tmp_path / "zero.gguf", tmp_path / "back", base=folder / "base.gguf")
    config = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert config["lora_alpha"] == config["r"] == 4


def test_import_refuses_what_is_not_a_lora_adapter(tiny, tmp_path):
    model, folder = tiny
    with pytest.raises(GGUFConversionError, match="is a GGUF model, not a llama.cpp LoRA adapter"):
        import_lora_from_gguf(folder / "base.gguf", tmp_path / "a")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(GGUFConversionError, match="is not a readable GGUF file"):
        import_lora_from_gguf(tmp_path / "junk.gguf", tmp_path / "a")
    work = folder / "exists"
    work.mkdir()
    _exported(model, work, target_modules=["v_proj"])
    with pytest.raises(FileExistsError, match="already holds an adapter"):
        import_lora_from_gguf(work / "adapter.gguf", work / "adapter")


def test_architectures_without_row_interleaving_keep_b_as_it_is(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=64)  # fmt: skip
    model = Qwen2ForCausalLM(config).eval()
    config.save_pretrained(tmp_path / "qwen")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    perturb_adapter_weights(peft_model)
    peft_model.save_pretrained(tmp_path / "adapter")
    done = export_lora_to_gguf(tmp_path / "adapter", tmp_path / "a.gguf", base=tmp_path / "qwen")
    assert done.architecture == "qwen2"
    _, lora_b = read_gguf_lora(tmp_path / "a.gguf").pairs["blk.0.attn_q.weight"]
    assert torch.equal(
        lora_b, peft_model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    )
    import_lora_from_gguf(tmp_path / "a.gguf", tmp_path / "back")
    original, back = (
        load_file(tmp_path / "adapter" / "adapter_model.safetensors"),
        load_file(tmp_path / "back" / "adapter_model.safetensors"),
    )
    assert all(torch.equal(original[k], back[k]) for k in original)


def test_importing_a_base_of_another_architecture_is_refused(tiny, tmp_path):
    from transformers import Qwen2Config

    model, folder = tiny
    work = folder / "arch"
    work.mkdir()
    _exported(model, work, target_modules=["v_proj"])
    Qwen2Config(num_hidden_layers=2).save_pretrained(tmp_path / "qwen")
    with pytest.raises(GGUFConversionError, match="is a llama adapter, but the base model .* is qwen2"):
        import_lora_from_gguf(work / "adapter.gguf", tmp_path / "back", base=tmp_path / "qwen")


def test_tiny_model_helper_round_trips_through_transformers_gguf_loader(tiny):
    """The helper writes a Llama that transformers' own GGUF loader reads back to the same logits."""
    from transformers import AutoModelForCausalLM

    model, folder = tiny
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file="base.gguf").eval()
    assert (peft_logits(loaded) - peft_logits(model)).abs().max() < 1e-4
