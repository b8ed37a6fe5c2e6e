"""Loading base models: the name adapters record, and reloading onto the same model without warnings."""

from __future__ import annotations

import warnings

from peftkit import LoraConfig, PeftModel, get_peft_model
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
