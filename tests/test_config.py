"""Configs: PEFT's enums, fields and defaults; validation; the JSON round trip."""

import dataclasses
import json
import warnings

import pytest

import peftkit
from peftkit import LoraConfig, PeftConfig, PeftType, TaskType, get_peft_config


def test_enum_values_equal_peft():
    import peft

    assert {t.value for t in TaskType} == {t.value for t in peft.TaskType}
    assert {t.value for t in PeftType} == {t.value for t in peft.PeftType}


def _defaults(cls):
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def test_lora_config_fields_and_defaults_equal_peft():
    import peft

    ours, theirs = _defaults(LoraConfig), _defaults(peft.LoraConfig)
    assert list(ours) == list(theirs)
    for name in theirs:
        if name == "runtime_config":
            assert ours[name].ephemeral_gpu_offload == theirs[name].ephemeral_gpu_offload
        else:
            assert ours[name] == theirs[name], name


def test_saved_config_has_exactly_peft_keys(tmp_path):
    import peft

    LoraConfig(target_modules=["q_proj"], task_type="CAUSAL_LM").save_pretrained(tmp_path / "ours")
    peft.LoraConfig(target_modules=["q_proj"], task_type="CAUSAL_LM").save_pretrained(tmp_path / "theirs")
    ours = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    theirs = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    assert set(ours) == set(theirs)
    assert ours["peft_type"] == "LORA" and ours["task_type"] == "CAUSAL_LM"
    for key in theirs:
        if key != "peft_version":
            assert ours[key] == theirs[key], key


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"r": 0}, "positive integer"),
        ({"r": -4}, "positive integer"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"lora_dropout": -0.1}, "lora_dropout"),
        ({"bias": "some"}, "bias must be one of"),
        ({"use_dora": True, "lora_bias": True}, "DoRA"),
        ({"target_modules": ".*q_proj", "layers_to_transform": [0]}, "layers_to_transform"),
        ({"layers_pattern": "layers"}, "layers_to_transform must also be specified"),
        ({"init_lora_weights": "xavier"}, "init_lora_weights"),
        ({"rank_pattern": {"q_proj": 0}}, "positive"),
        ({"task_type": "CAUSAL"}, "CAUSAL_LM"),
    ],
)
def test_invalid_config_values_raise_clear_errors(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        LoraConfig(**kwargs)


def test_task_type_error_lists_valid_values():
    with pytest.raises(ValueError) as err:
        LoraConfig(task_type="TEXT_GEN")
    for valid in ("CAUSAL_LM", "SEQ_CLS", "SEQ_2_SEQ_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION"):
        assert valid in str(err.value)
    assert "TEXT_GEN" in str(err.value)


def test_config_round_trip_and_dispatch(tmp_path):
    config = LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        rank_pattern={"v_proj": 2},
        task_type="SEQ_CLS",
    )
    config.save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, LoraConfig)
    assert loaded.r == 4 and loaded.lora_alpha == 16 and loaded.rank_pattern == {"v_proj": 2}
    assert loaded.target_modules == {"q_proj", "v_proj"} and loaded.task_type == TaskType.SEQ_CLS
    assert loaded.inference_mode is False


def test_config_written_by_peft_loads(tmp_path):
    import peft

    peft.LoraConfig(r=3, target_modules="all-linear", use_dora=True).save_pretrained(tmp_path)
    loaded = LoraConfig.from_pretrained(tmp_path)
    assert loaded.r == 3 and loaded.use_dora and loaded.target_modules == "all-linear"


def test_unknown_keys_warn_and_load(tmp_path):
    LoraConfig(r=2, target_modules=["q_proj"]).save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    data = json.loads(path.read_text())
    data["future_option"] = 1
    data["another_new_key"] = "x"
    path.write_text(json.dumps(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PeftConfig.from_pretrained(tmp_path)
    assert loaded.r == 2
    messages = " ".join(str(w.message) for w in caught)
    assert "future_option" in messages and "another_new_key" in messages


def test_get_peft_config_from_dict():
    config = get_peft_config(
        {"peft_type": "LORA", "r": 5, "target_modules": ["fc"], "task_type": "CAUSAL_LM"}
    )
    assert isinstance(config, LoraConfig) and config.r == 5 and config.task_type == TaskType.CAUSAL_LM


def test_get_peft_config_unknown_type_names_supported():
    with pytest.raises(ValueError, match="LORA"):
        get_peft_config({"peft_type": "NOT_A_METHOD"})


def test_missing_config_file_is_clear_error(tmp_path):
    with pytest.raises(ValueError, match="adapter_config.json"):
        PeftConfig.from_pretrained(tmp_path)


def test_registry_has_lora():
    assert peftkit.PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.LORA] is LoraConfig
