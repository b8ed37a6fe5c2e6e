"""AutoPeftModel*: base model + tokenizer + adapter in one call, without ever running adapter-supplied code."""

from __future__ import annotations

import json
import sys

import peft
import peft.auto
import pytest
import torch
import transformers
from tests.conftest import llama_inputs, tiny_bert, tiny_llama
from tests.persistence.helpers import ATOL, max_diff, read_config, save_both, tiny_tokenizer

import peftkit
from peftkit import (
    AutoPeftModel,
    AutoPeftModelForCausalLM,
    AutoPeftModelForFeatureExtraction,
    AutoPeftModelForSequenceClassification,
)
from peftkit.utils.warnings import PeftWarning


def _logits(model):
    with torch.no_grad():
        return model(**llama_inputs()).logits


def _point_to_base(folder, base_dir, **extra):
    config = read_config(folder)
    config.update(base_model_name_or_path=str(base_dir), **extra)
    (folder / "adapter_config.json").write_text(json.dumps(config))


@pytest.fixture
def adapter(tmp_path):
    """An adapter saved by peft whose base_model_name_or_path is a local folder holding the base model."""
    base, theirs, _, peft_dir, _ = save_both(
        tmp_path, tiny_llama, {"target_modules": ["q_proj", "v_proj"]}, "CAUSAL_LM"
    )
    base.save_pretrained(tmp_path / "base")
    _point_to_base(peft_dir, tmp_path / "base")
    return theirs, peft_dir, tmp_path / "base"


@pytest.fixture
def spy_base_load(monkeypatch):
    """Record the keyword arguments AutoModelForCausalLM.from_pretrained receives (hub-only ones dropped)."""
    calls = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, path, *args, **kwargs):
        calls.append(dict(kwargs))
        for hub_only in ("revision", "token"):
            kwargs.pop(hub_only, None)
        return real(cls, path, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    return calls


def test_causal_lm_in_one_call(adapter):
    theirs, folder, _ = adapter
    model = AutoPeftModelForCausalLM.from_pretrained(folder)
    assert type(model) is peftkit.PeftModelForCausalLM
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert max_diff(_logits(model), _logits(theirs)) <= ATOL


def test_revision_and_token_forwarded_trust_remote_code_never_implied(adapter, spy_base_load):
    _, folder, _ = adapter
    _point_to_base(folder, adapter[2], revision="base-rev")
    AutoPeftModelForCausalLM.from_pretrained(
        folder, revision="adapter-rev", token="hf_secret", dtype=torch.float32
    )
    (kwargs,) = spy_base_load
    assert kwargs["revision"] == "base-rev"  # the base's revision from the config, as in peft
    assert kwargs["token"] == "hf_secret"
    assert kwargs["dtype"] is torch.float32
    assert "trust_remote_code" not in kwargs


def test_config_cannot_turn_on_trust_remote_code(adapter, spy_base_load):
    _, folder, base_dir = adapter
    _point_to_base(folder, base_dir, trust_remote_code=True)
    with pytest.warns(PeftWarning, match="trust_remote_code"):  # an unknown key: named and dropped
        AutoPeftModelForCausalLM.from_pretrained(folder)
    assert "trust_remote_code" not in spy_base_load[0]


def test_explicit_trust_remote_code_is_passed_as_given(adapter, spy_base_load):
    _, folder, _ = adapter
    AutoPeftModelForCausalLM.from_pretrained(folder, trust_remote_code=False)
    assert spy_base_load[0]["trust_remote_code"] is False


def test_auto_peft_model_uses_auto_mapping_like_peft(tmp_path):
    base, theirs, _, _, kit_dir = save_both(tmp_path, tiny_llama, {"target_modules": ["q_proj"]}, None)
    base.save_pretrained(tmp_path / "base")
    _point_to_base(kit_dir, tmp_path / "base")
    ours = AutoPeftModel.from_pretrained(kit_dir)
    reference = peft.auto.AutoPeftModel.from_pretrained(str(kit_dir))
    assert type(ours).__name__ == type(reference).__name__ == "PeftModel"
    assert type(ours.get_base_model()) is transformers.LlamaForCausalLM
    assert max_diff(_logits(ours), _logits(theirs)) <= ATOL


def test_auto_mapping_never_imports_a_module(adapter, tmp_path, monkeypatch):
    _, folder, base_dir = adapter
    plant = tmp_path / "planted"
    plant.mkdir()
    (plant / "evil_module.py").write_text("import os\nos.environ['PEFTKIT_PWNED'] = '1'\nclass Model: pass\n")
    monkeypatch.syspath_prepend(str(plant))
    _point_to_base(
        folder,
        base_dir,
        task_type=None,
        auto_mapping={"base_model_class": "Model", "parent_library": "evil_module"},
    )
    with pytest.raises(ValueError, match="never imports"):
        AutoPeftModel.from_pretrained(folder)
    with pytest.raises(ValueError, match="never imports"):
        AutoPeftModel.from_pretrained(folder, import_allowlist=["evil_module"])
    assert "evil_module" not in sys.modules and "PEFTKIT_PWNED" not in __import__("os").environ


def test_auto_mapping_must_name_a_transformers_model_class(adapter):
    _, folder, base_dir = adapter
    _point_to_base(
        folder,
        base_dir,
        task_type=None,
        auto_mapping={"base_model_class": "pipeline", "parent_library": "transformers"},
    )
    with pytest.raises(ValueError, match="does not export"):
        AutoPeftModel.from_pretrained(folder)


def test_task_type_mismatch_is_an_error(adapter):
    _, folder, _ = adapter
    with pytest.raises(ValueError, match="PeftModelForCausalLM"):
        AutoPeftModelForSequenceClassification.from_pretrained(folder)
    with pytest.raises(ValueError, match="AutoPeftModelForCausalLM"):
        AutoPeftModel.from_pretrained(folder)


def test_missing_base_name_is_a_clear_error(adapter):
    _, folder, _ = adapter
    config = read_config(folder)
    config["base_model_name_or_path"] = None
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="base_model_name_or_path"):
        AutoPeftModelForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize("tokens", [100, 140])
def test_tokenizer_in_adapter_grows_embeddings_like_peft(adapter, tokens):
    _, folder, _ = adapter
    tiny_tokenizer(tokens).save_pretrained(folder)
    ours = AutoPeftModelForCausalLM.from_pretrained(folder)
    reference = peft.auto.AutoPeftModelForCausalLM.from_pretrained(str(folder))
    rows = ours.get_input_embeddings().weight.shape[0]
    assert rows == reference.get_input_embeddings().weight.shape[0] == max(tokens, 128)


def test_is_trainable_and_adapter_name(adapter):
    _, folder, _ = adapter
    model = AutoPeftModelForCausalLM.from_pretrained(folder, adapter_name="mine", is_trainable=True)
    assert list(model.peft_config) == ["mine"]
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert all("lora_" in n and ".mine." in n for n, p in model.named_parameters() if p.requires_grad)


def test_sequence_classification_and_feature_extraction(tmp_path):
    for task, auto_cls, kit_cls, builder in (
        (
            "SEQ_CLS",
            AutoPeftModelForSequenceClassification,
            peftkit.PeftModelForSequenceClassification,
            "seq_cls",
        ),
        (
            "FEATURE_EXTRACTION",
            AutoPeftModelForFeatureExtraction,
            peftkit.PeftModelForFeatureExtraction,
            "feature",
        ),
    ):
        root = tmp_path / task
        base, theirs, _, peft_dir, _ = save_both(
            root, lambda b=builder: tiny_bert(task=b), {"target_modules": ["query"]}, task
        )
        base.save_pretrained(root / "base")
        _point_to_base(peft_dir, root / "base")
        model = auto_cls.from_pretrained(peft_dir)
        assert type(model) is kit_cls
        ids = {"input_ids": torch.randint(1, 128, (2, 5), generator=torch.Generator().manual_seed(0))}
        with torch.no_grad():
            mine, reference = model(**ids), theirs(**ids)
        key = "logits" if task == "SEQ_CLS" else "last_hidden_state"
        assert max_diff(mine[key], reference[key]) <= ATOL


def test_cannot_be_instantiated_directly():
    with pytest.raises(OSError, match="from_pretrained"):
        AutoPeftModelForCausalLM()
