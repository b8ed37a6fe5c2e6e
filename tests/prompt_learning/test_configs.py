"""Prompt-learning configs against peft: same fields and defaults, same model-dependent values filled
in (decoder-only, GQA, encoder-decoder, encoder), JSON round trips, and the safety rules."""

import dataclasses
import json

import pytest
import torch
from tests.conftest import tiny_bert, tiny_gpt2, tiny_llama, tiny_t5

from .helpers import config_pair, make_prompt_pair

CONFIG_NAMES = ["PromptTuningConfig", "PrefixTuningConfig", "PromptEncoderConfig"]


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = "<required>"
        out[f.name] = getattr(value, "value", value)
    return out


@pytest.mark.parametrize("name", [*CONFIG_NAMES, "MultitaskPromptTuningConfig", "PromptLearningConfig"])
def test_fields_and_defaults_match_peft(name):
    import peft

    import peftkit

    assert list(_defaults(getattr(peftkit, name))) == list(_defaults(getattr(peft, name)))
    assert _defaults(getattr(peftkit, name)) == _defaults(getattr(peft, name))


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_kind_properties(name):
    _, ours = config_pair(name, num_virtual_tokens=2)
    assert ours.is_prompt_learning and not ours.is_adaption_prompt
    assert (
        ours.peft_type.value
        == {
            "PromptTuningConfig": "PROMPT_TUNING",
            "PrefixTuningConfig": "PREFIX_TUNING",
            "PromptEncoderConfig": "P_TUNING",
        }[name]
    )


FILLED = (
    "token_dim",
    "num_attention_heads",
    "num_layers",
    "num_transformer_submodules",
    "encoder_hidden_size",
)

MODELS = {
    "llama_gqa": (tiny_llama, "CAUSAL_LM"),
    "llama_mha": (lambda: tiny_llama(num_key_value_heads=4), "CAUSAL_LM"),
    "llama_head_dim": (lambda: tiny_llama(head_dim=12), "CAUSAL_LM"),
    "gpt2": (tiny_gpt2, "CAUSAL_LM"),
    "t5": (tiny_t5, "SEQ_2_SEQ_LM"),
    "bert": (lambda: tiny_bert(task="feature"), "FEATURE_EXTRACTION"),
}


@pytest.mark.parametrize("explicit", [{}, {"token_dim": 8, "num_attention_heads": 2, "num_layers": 1}])
@pytest.mark.parametrize("model_key", list(MODELS))
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_model_dependent_fields_are_filled_as_peft_does(name, model_key, explicit):
    model_fn, task_type = MODELS[model_key]
    if explicit and name != "PromptTuningConfig":
        explicit = {**explicit, "encoder_hidden_size": 8}
    _, theirs, ours = make_prompt_pair(model_fn, name, task_type=task_type, num_virtual_tokens=3, **explicit)
    theirs_config, ours_config = theirs.peft_config["default"], ours.peft_config["default"]
    for field in FILLED:
        if hasattr(theirs_config, field) and field in {f.name for f in dataclasses.fields(theirs_config)}:
            assert getattr(ours_config, field) == getattr(theirs_config, field), field


def test_json_round_trip_keeps_enums_and_values(tmp_path):
    import peftkit

    config = peftkit.PromptEncoderConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_reparameterization_type="LSTM"
    )
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "adapter_config.json").read_text())
    assert data["encoder_reparameterization_type"] == "LSTM" and data["peft_type"] == "P_TUNING"
    loaded = peftkit.PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, peftkit.PromptEncoderConfig)
    assert loaded.encoder_reparameterization_type == peftkit.PromptEncoderReparameterizationType.LSTM


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt_tuning_init": "TEXT"}, "tokenizer_name_or_path"),
        ({"prompt_tuning_init": "TEXT", "tokenizer_name_or_path": "x"}, "prompt_tuning_init_text"),
        ({"tokenizer_kwargs": {"use_fast": True}}, "only used with prompt_tuning_init='TEXT'"),
        ({"prompt_tuning_init": "BOGUS"}, "RANDOM, TEXT|TEXT, SAMPLE_VOCAB"),
    ],
)
def test_prompt_tuning_config_errors(kwargs, message):
    import peftkit

    with pytest.raises(ValueError, match=message):
        peftkit.PromptTuningConfig(num_virtual_tokens=3, **kwargs)


def test_other_config_errors():
    import peftkit

    with pytest.raises(ValueError, match="MLP, LSTM"):
        peftkit.PromptEncoderConfig(num_virtual_tokens=3, encoder_reparameterization_type="GRU")
    with pytest.raises(ValueError, match="'zero'"):
        peftkit.PrefixTuningConfig(num_virtual_tokens=3, init_weights="ones")
    with pytest.raises(ValueError, match="task_type"):
        peftkit.get_peft_model(tiny_llama(), peftkit.PromptTuningConfig(num_virtual_tokens=3))
    with pytest.raises(ValueError, match="num_virtual_tokens"):
        peftkit.get_peft_model(tiny_llama(), peftkit.PromptTuningConfig(task_type="CAUSAL_LM"))


def test_trust_remote_code_from_a_config_file_is_stripped(tmp_path):
    import peftkit

    data = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": 3,
        "prompt_tuning_init": "TEXT",
        "prompt_tuning_init_text": "hello",
        "tokenizer_name_or_path": "some/tokenizer",
        "tokenizer_kwargs": {"trust_remote_code": True, "use_fast": True},
    }
    (tmp_path / "adapter_config.json").write_text(json.dumps(data))
    with pytest.warns(peftkit.PeftWarning, match="trust_remote_code"):
        config = peftkit.PeftConfig.from_pretrained(tmp_path)
    assert config.tokenizer_kwargs == {"use_fast": True}
    with pytest.warns(peftkit.PeftWarning, match="trust_remote_code"):
        from_dict = peftkit.get_peft_config(data)
    assert "trust_remote_code" not in from_dict.tokenizer_kwargs


def _word_level_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "hello": 5, "world": 9, "prompt": 17, "tuning": 42}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("num_virtual_tokens", [3, 6])
def test_text_initialisation_matches_peft(tmp_path, num_virtual_tokens):
    """TEXT: the prompt starts as the word embeddings of the text's tokens (cut or repeated to fit)."""
    tokenizer_path = _word_level_tokenizer(tmp_path / "tok")
    base = tiny_llama()
    kwargs = dict(
        task_type="CAUSAL_LM",
        num_virtual_tokens=num_virtual_tokens,
        prompt_tuning_init="TEXT",
        prompt_tuning_init_text="hello world prompt tuning",
        tokenizer_name_or_path=tokenizer_path,
    )
    import peft

    import peftkit

    theirs = peft.get_peft_model(tiny_llama(), peft.PromptTuningConfig(**kwargs))
    ours = peftkit.get_peft_model(tiny_llama(), peftkit.PromptTuningConfig(**kwargs))
    got = ours.prompt_encoder["default"].embedding.weight
    assert torch.equal(got, theirs.prompt_encoder["default"].embedding.weight)
    ids = torch.tensor(([5, 9, 17, 42] * 2)[:num_virtual_tokens])
    assert torch.equal(got, base.get_input_embeddings().weight[ids])


def test_sample_vocab_initialisation_copies_vocabulary_rows():
    import peftkit

    base = tiny_llama()
    vocab = base.get_input_embeddings().weight.detach().clone()
    model = peftkit.get_peft_model(
        base,
        peftkit.PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=5, prompt_tuning_init="SAMPLE_VOCAB"
        ),
    )
    rows = model.prompt_encoder["default"].embedding.weight.detach()
    for row in rows:
        assert (vocab == row).all(dim=1).any()


@pytest.mark.parametrize("extra", [{}, {"prefix_projection": True}])
def test_prefix_zero_init_matches_peft(extra):
    """init_weights='zero' zeroes the same tensors as peft (the prefix, or the projection's last layer)."""
    import peft

    import peftkit

    kwargs = dict(task_type="CAUSAL_LM", num_virtual_tokens=3, init_weights="zero", **extra)
    ours = peftkit.get_peft_model(tiny_llama(), peftkit.PrefixTuningConfig(**kwargs))
    theirs = peft.get_peft_model(tiny_llama(), peft.PrefixTuningConfig(**kwargs))
    ours_zero = {n for n, p in ours.prompt_encoder.named_parameters() if p.abs().sum() == 0}
    peft_zero = {n for n, p in theirs.prompt_encoder.named_parameters() if p.abs().sum() == 0}
    assert ours_zero == peft_zero
    assert ours_zero  # something is zero
