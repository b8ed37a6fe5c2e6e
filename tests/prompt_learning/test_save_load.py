"""Prompt-learning adapters on disk: peft's format both ways (same files, same outputs after loading),
several adapters on one model switchable with set_adapter, and the load-time refusals."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import llama_inputs, tiny_bert, tiny_llama, tiny_llama_seq_cls, tiny_t5

from .helpers import assert_close, make_prompt_pair, output_of

CASES = {
    "llama_prompt": (tiny_llama, "PromptTuningConfig", "CAUSAL_LM", {}),
    "llama_prefix": (tiny_llama, "PrefixTuningConfig", "CAUSAL_LM", {}),
    "llama_prefix_projection": (tiny_llama, "PrefixTuningConfig", "CAUSAL_LM", {"prefix_projection": True}),
    "llama_ptuning_lstm": (
        tiny_llama,
        "PromptEncoderConfig",
        "CAUSAL_LM",
        {"encoder_reparameterization_type": "LSTM"},
    ),
    "llama_seq_cls_prompt": (tiny_llama_seq_cls, "PromptTuningConfig", "SEQ_CLS", {}),
    "llama_seq_cls_ptuning": (tiny_llama_seq_cls, "PromptEncoderConfig", "SEQ_CLS", {}),
    "bert_seq_cls_prefix": (lambda: tiny_bert(task="seq_cls"), "PrefixTuningConfig", "SEQ_CLS", {}),
    "bert_token_cls_prompt": (lambda: tiny_bert(task="token_cls"), "PromptTuningConfig", "TOKEN_CLS", {}),
    "bert_qa_prefix": (lambda: tiny_bert(task="qa"), "PrefixTuningConfig", "QUESTION_ANS", {}),
    "bert_feature_ptuning": (
        lambda: tiny_bert(task="feature"),
        "PromptEncoderConfig",
        "FEATURE_EXTRACTION",
        {},
    ),
    "t5_prompt": (tiny_t5, "PromptTuningConfig", "SEQ_2_SEQ_LM", {}),
    "t5_prefix": (tiny_t5, "PrefixTuningConfig", "SEQ_2_SEQ_LM", {}),
}

# every method on every task class (issue 8: each method and task class, both ways)
_TASK_MODELS = {
    "llama_causal": (tiny_llama, "CAUSAL_LM"),
    "llama_seq_cls": (tiny_llama_seq_cls, "SEQ_CLS"),
    "bert_seq_cls": (lambda: tiny_bert(task="seq_cls"), "SEQ_CLS"),
    "bert_token_cls": (lambda: tiny_bert(task="token_cls"), "TOKEN_CLS"),
    "bert_qa": (lambda: tiny_bert(task="qa"), "QUESTION_ANS"),
    "bert_feature": (lambda: tiny_bert(task="feature"), "FEATURE_EXTRACTION"),
    "t5_seq2seq": (tiny_t5, "SEQ_2_SEQ_LM"),
}
for _task_name, (_model_fn, _task) in _TASK_MODELS.items():
    for _method in ("PromptTuningConfig", "PrefixTuningConfig", "PromptEncoderConfig"):
        CASES.setdefault(f"matrix_{_task_name}_{_method}", (_model_fn, _method, _task, {}))


def _inputs(task_type: str) -> dict:
    inputs = llama_inputs()
    if task_type == "SEQ_2_SEQ_LM":
        inputs["decoder_input_ids"] = torch.tensor([[0, 5, 6], [0, 7, 8]])
    return inputs


def _without_duplicates(config: dict) -> dict:
    # peft lists the task heads twice in modules_to_save (["classifier", "score", "classifier", "score"])
    if config.get("modules_to_save"):
        config["modules_to_save"] = sorted(set(config["modules_to_save"]))
    return config


@pytest.mark.parametrize("case", list(CASES))
def test_saved_files_match_and_load_both_ways(case, tmp_path, peft_oracle):
    """peft's outputs: live, or recorded where peft cannot run prefix tuning (transformers >= 5.24)."""
    import peft

    import peftkit

    model_fn, config_name, task_type, extra = CASES[case]
    base, theirs, ours = make_prompt_pair(
        model_fn, config_name, task_type=task_type, num_virtual_tokens=3, **extra
    )
    inputs = _inputs(task_type)
    expected = peft_oracle(lambda: output_of(theirs(**inputs), task_type), theirs, inputs)
    peft_dir, kit_dir = tmp_path / "peft", tmp_path / "peftkit"
    theirs.save_pretrained(peft_dir)
    ours.save_pretrained(kit_dir)

    peft_file = load_file(peft_dir / "adapter_model.safetensors")
    kit_file = load_file(kit_dir / "adapter_model.safetensors")
    assert sorted(kit_file) == sorted(peft_file)
    assert "prompt_embeddings" in kit_file
    for key, tensor in peft_file.items():
        assert kit_file[key].dtype == tensor.dtype
        assert_close(kit_file[key], tensor, atol=1e-6)
    peft_config = _without_duplicates(json.loads((peft_dir / "adapter_config.json").read_text()))
    kit_config = _without_duplicates(json.loads((kit_dir / "adapter_config.json").read_text()))
    assert kit_config == peft_config

    loaded_by_us = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), peft_dir)
    loaded_by_peft = peft.PeftModel.from_pretrained(copy.deepcopy(base), kit_dir)
    assert type(loaded_by_us).__name__ == type(loaded_by_peft).__name__
    assert_close(output_of(loaded_by_us(**inputs), task_type), expected)
    # what peft computes from peftkit's files. Fingerprinted by the adapter they hold (peft's weights: the
    # files were checked equal above) rather than by the loaded model's tensors: P-tuning saves its encoder's
    # output, whose last bits follow the thread count of the GEMM that computed it.
    answer = peft_oracle(
        lambda: output_of(loaded_by_peft(**inputs), task_type), theirs, inputs, "peft loads peftkit's files"
    )
    assert_close(answer, expected)
    assert loaded_by_us.get_nb_trainable_parameters() == loaded_by_peft.get_nb_trainable_parameters()
    assert not loaded_by_us.training


def test_several_adapters_switch_with_set_adapter(tmp_path):
    """Two prompt adapters on one model, saved (second in a sub-folder), loaded back by both libraries,
    and switched with set_adapter: each gives its own outputs."""
    import peft

    import peftkit

    base = tiny_llama()
    inputs = llama_inputs()
    first = peftkit.get_peft_model(
        copy.deepcopy(base), peftkit.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )
    first.add_adapter("other", peftkit.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    assert first.active_adapter == "default"
    out_default = first(**inputs).logits
    first.set_adapter("other")
    out_other = first(**inputs).logits
    assert out_default.shape[1] == 10 and out_other.shape[1] == 9
    first.save_pretrained(tmp_path)
    assert (tmp_path / "other" / "adapter_model.safetensors").is_file()

    for library in (peftkit, peft):
        loaded = library.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
        loaded.load_adapter(tmp_path / "other", adapter_name="other")
        assert_close(loaded(**inputs).logits, out_default)
        loaded.set_adapter("other")
        assert_close(loaded(**inputs).logits, out_other)


def test_delete_adapter_makes_another_active():
    import peftkit

    model = peftkit.get_peft_model(
        tiny_llama(), peftkit.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )
    model.add_adapter("b", peftkit.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    model.delete_adapter("default")
    assert model.active_adapter == "b" and list(model.prompt_encoder) == ["b"]
    assert model.get_prompt(1).get_seq_length() == 2
    with pytest.raises(ValueError, match="only adapter"):
        model.delete_adapter("b")


def test_adapters_of_different_methods_are_refused():
    import peftkit

    model = peftkit.get_peft_model(
        tiny_llama(), peftkit.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )
    with pytest.raises(ValueError, match="different peft types"):
        model.add_adapter("b", peftkit.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    assert list(model.peft_config) == ["default"]


def test_loading_for_training_is_refused_as_in_peft(tmp_path):
    import peftkit

    model = peftkit.get_peft_model(
        tiny_llama(), peftkit.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )
    model.save_pretrained(tmp_path)
    base = tiny_llama()
    with pytest.raises(ValueError, match="is_trainable=False"):
        peftkit.PeftModel.from_pretrained(base, tmp_path, is_trainable=True)
    assert all(p.requires_grad for p in base.parameters())  # the refusal came before the model was touched


def test_shape_mismatch_names_the_cause(tmp_path):
    import peftkit
    from peftkit.utils.warnings import AdapterLoadError

    model = peftkit.get_peft_model(
        tiny_llama(), peftkit.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )
    state = peftkit.get_peft_model_state_dict(model)
    state["prompt_embeddings"] = torch.zeros(5, 32)
    with pytest.raises(AdapterLoadError, match="num_virtual_tokens"):
        peftkit.set_peft_model_state_dict(model, state)


def test_merge_is_refused_with_a_clear_error():
    import peftkit

    model = peftkit.get_peft_model(
        tiny_llama(), peftkit.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )
    for method in ("merge_and_unload", "merge_adapter", "unload"):
        with pytest.raises(ValueError, match="virtual tokens"):
            getattr(model, method)()


def test_loading_a_text_initialised_adapter_needs_no_tokenizer(tmp_path):
    """The saved prompt replaces the TEXT initialisation, so loading never fetches the tokenizer (peft
    would try to download `tokenizer_name_or_path` first)."""
    import peftkit

    model = peftkit.get_peft_model(
        tiny_llama(), peftkit.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "adapter_config.json"
    data = json.loads(config_file.read_text())
    data.update(
        prompt_tuning_init="TEXT",
        prompt_tuning_init_text="hello",
        tokenizer_name_or_path=str(tmp_path / "no_such_tokenizer"),
    )
    config_file.write_text(json.dumps(data))
    inputs = llama_inputs()
    loaded = peftkit.PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert_close(loaded(**inputs).logits, model(**inputs).logits)


def test_loading_computed_tokens_into_a_training_encoder_warns():
    """P-tuning files hold the encoder's output; loading them into an encoder built for training is
    allowed (as in peft) but said out loud."""
    import peftkit

    model = peftkit.get_peft_model(
        tiny_llama(), peftkit.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )
    state = peftkit.get_peft_model_state_dict(model)
    with pytest.warns(peftkit.PeftWarning, match="encoder's output"):
        peftkit.set_peft_model_state_dict(model, state)
