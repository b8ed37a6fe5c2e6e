"""Bad input to `peftkit train` ends with exit status 2 and a message naming the problem and the fix."""

from __future__ import annotations

import pytest

from .conftest import write_jsonl


@pytest.fixture
def base_args(tmp_path, tiny_model_dir, prompt_data):
    return (
        "train",
        "--model",
        tiny_model_dir,
        "--data",
        prompt_data,
        "-o",
        tmp_path / "out",
        "--no-progress",
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--lr-scheduler", "sometimes"), "argument --lr-scheduler: invalid choice: 'sometimes'"),
        (("--bias", "some"), "argument --bias: invalid choice: 'some'"),
        (("--r", "eight"), "argument --r/--rank: invalid int value: 'eight'"),
        (("--use-dora", "maybe"), "argument --use-dora: expected true or false, got 'maybe'"),
        (("--rank-pattern", "{q_proj: 4"), "argument --rank-pattern: expected JSON"),
        (("--frobnicate",), "unknown flag --frobnicate (see peftkit train --help)"),
        (("--r", 0), "Invalid LoRA options: LoRA rank r must be a positive integer, got r=0"),
        (("--lora-dropout", 1.5), "lora_dropout must be in [0, 1)"),
        (("--use-dora", "--lora-bias"), "lora_bias=True is not supported together with DoRA"),
        (("--epochs", 0), "--epochs must be a positive integer, got 0"),
        (("--batch-size", -1), "--batch-size must be a positive integer, got -1"),
        (("--lr", 0), "--lr must be positive, got 0.0"),
        (("--warmup-steps", -2), "--warmup-steps must be >= 0"),
        (("--max-length", 0), "--max-length must be a positive integer"),
        (("--eval-fraction", 0.2, "--eval-data", "x.jsonl"), "either --eval-data or --eval-fraction"),
        (
            ("--eval-data", "/nonexistent/eval.jsonl"),
            "The dataset file '/nonexistent/eval.jsonl' does not exist",
        ),
        (("--target-modules", "no_such_layer"), "Could not add the LoRA adapter"),
        (
            ("--lora-config", "/nonexistent/lora.json"),
            "The LoRA config file '/nonexistent/lora.json' does not exist",
        ),
    ],
)
def test_train_rejects_bad_flags(cli, base_args, extra, message):
    code, _, err = cli(*base_args, *extra, "--max-steps", 1)
    assert code == 2
    assert message in err, err


def test_train_errors_on_missing_and_malformed_data(tmp_path, tiny_model_dir, cli):
    common = ("train", "--model", tiny_model_dir, "-o", tmp_path / "out")
    code, _, err = cli(*common, "--data", tmp_path / "missing.jsonl")
    assert code == 2 and "does not exist" in err
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": "b"}, {"text": "c"}],
    )
    code, _, err = cli(*common, "--data", bad)
    assert code == 2
    assert f"{bad}, line 3: expected the fields 'prompt' and 'completion'" in err and "['text']" in err


def test_train_errors_on_bad_models(tmp_path, prompt_data, trained_adapter, cli):
    common = ("train", "--data", prompt_data, "-o", tmp_path / "out")
    code, _, err = cli(*common, "--model", tmp_path / "no-such-model")
    assert code == 2 and "does not exist" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.gguf").write_bytes(b"")
    code, _, err = cli(*common, "--model", empty)
    assert code == 2 and "not a transformers model folder (no config.json)" in err and "x.gguf" in err
    code, _, err = cli(*common, "--model", tmp_path / "missing.gguf")
    assert code == 2 and "The GGUF file" in err and "does not exist" in err
    code, _, err = cli(*common, "--model", prompt_data)
    assert code == 2 and "is a file; pass a model folder, a .gguf file or a Hub id" in err


def test_lora_config_file_errors(tmp_path, base_args, cli):
    cases = {
        "typo.json": ('{"rank": 8}', "'rank' is not a LoraConfig field. Did you mean 'r'?"),
        "list.json": ("[1, 2]", "must hold a mapping of LoraConfig fields, got list"),
        "broken.json": ("{", "is not valid JSON"),
        "ia3.json": (
            '{"peft_type": "IA3"}',
            "describes a IA3 adapter; `peftkit train` trains LoRA adapters only",
        ),
        "conf.toml": ("r = 8", "must end in .json, .yaml or .yml"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        code, _, err = cli(*base_args, "--lora-config", path)
        assert code == 2 and message in err, (name, err)


def test_yaml_config_without_pyyaml_names_the_extra(tmp_path, base_args, cli, monkeypatch):
    import sys

    path = tmp_path / "lora.yaml"
    path.write_text("r: 4\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # makes `import yaml` fail
    code, _, err = cli(*base_args, "--lora-config", path)
    assert code == 2 and "needs the 'pyyaml' package" in err and "pip install 'peftkit[yaml]'" in err


def test_global_threads_flag(cli, base_args):
    code, _, err = cli("--threads", 0, *base_args)
    assert code == 2 and "--threads must be a positive integer" in err


def test_missing_subcommand_and_device(cli, base_args):
    code, _, err = cli()
    assert code == 2 and "required: COMMAND" in err
    code, _, err = cli(*base_args, "--device", "cuda:3", "--max-steps", 1)
    import torch

    if not torch.cuda.is_available():
        assert code == 2 and "no CUDA GPU is available" in err
    else:
        assert code in (0, 2)


def test_unreachable_hub_ids_are_clear_errors(tmp_path, prompt_data, cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be downloaded in tests
    code, _, err = cli(
        "train", "--model", "no-such-org/no-such-model", "--data", prompt_data, "-o", tmp_path / "o"
    )
    assert (
        code == 2
        and "The model 'no-such-org/no-such-model' is not a local path, HF_HUB_OFFLINE is set" in err
    )
    code, _, err = cli("info", "no-such-org/no-such-adapter")
    assert code == 2 and "The adapter 'no-such-org/no-such-adapter' is not a local path" in err
    assert "download it while online" in err
