"""`peftkit train` on a tiny model: the adapter, metrics, LoRA options, accumulation, checkpoints, resuming."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from peftkit.cli.data import encode_rows
from peftkit.cli.training import _token_loss_sum

from .conftest import build_model, build_tokenizer, write_jsonl

TRAIN = ("--device", "cpu", "--no-progress")


def _metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_a_valid_adapter_and_metrics(tmp_path, tiny_model_dir, prompt_data, cli):
    import peft

    out = tmp_path / "run"
    code, stdout, err = cli(
        "train", "--model", tiny_model_dir, "--data", prompt_data, "-o", out, "--max-steps", 4, *TRAIN
    )
    assert code == 0, err
    assert "trainable params" in stdout and "Adapter saved to" in stdout
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    records = [r for r in _metrics(out) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in records)
    assert (out / "loss.png").is_file() == (importlib.util.find_spec("matplotlib") is not None)
    # the oracle loads it, and the trained B factors moved away from their zero start
    loaded = peft.PeftModel.from_pretrained(build_model(len(build_tokenizer())), out)
    assert loaded.peft_config["default"].r == 8
    weights = load_file(out / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in weights.items())


def test_loss_goes_down_and_evaluation_is_recorded(tmp_path, tiny_model_dir, chat_data, cli):
    out = tmp_path / "run"
    code, stdout, err = cli(
        "train", "--model", tiny_model_dir, "--data", chat_data, "-o", out, "--epochs", 6, "--lr", 5e-2,
        "--batch-size", 2, "--eval-fraction", 0.25, "--r", 8, "--target-modules", "all-linear", *TRAIN,
    )  # fmt: skip
    assert code == 0, err
    losses = [r["loss"] for r in _metrics(out) if "loss" in r]
    evals = [r for r in _metrics(out) if "eval_loss" in r]
    assert len(losses) == 6 * 3  # 6 training rows, batch 2: 3 steps per epoch
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
    assert len(evals) == 6 and evals[-1]["step"] == 18  # once per epoch
    assert "evaluation loss" in stdout


def test_lora_flags_and_config_file_reach_the_adapter_config(tmp_path, tiny_model_dir, prompt_data, cli):
    options = tmp_path / "lora.json"
    options.write_text(
        json.dumps({"r": 2, "lora_alpha": 5, "lora_dropout": 0.1, "target_modules": ["k_proj"]})
    )
    out = tmp_path / "run"
    code, _, err = cli(
        "train", "--model", tiny_model_dir, "--data", prompt_data, "-o", out, "--max-steps", 1,
        "--lora-config", options, "--r", 4, "--use-dora", "--rank-pattern", '{"v_proj": 2}',
        "--target-modules", "q_proj", "v_proj", "--layers-to-transform", 1, *TRAIN,
    )  # fmt: skip
    assert code == 0, err
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4  # the flag overrides the file
    assert config["lora_alpha"] == 5 and config["lora_dropout"] == 0.1  # from the file
    assert config["use_dora"] is True and config["rank_pattern"] == {"v_proj": 2}
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"] and config["layers_to_transform"] == [1]
    keys = load_file(out / "adapter_model.safetensors")
    assert keys["base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"].shape[0] == 2
    assert keys["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"].shape[0] == 4
    assert not any(".layers.0." in k for k in keys)


def test_yaml_config_file_and_regex_target(tmp_path, tiny_model_dir, prompt_data, cli):
    pytest.importorskip("yaml")
    options = tmp_path / "lora.yaml"
    options.write_text("r: 3\nlora_alpha: 6\ntarget_modules: '.*\\.(q|v)_proj'\n")
    out = tmp_path / "run"
    code, _, err = cli("train", "--model", tiny_model_dir, "--data", prompt_data, "-o", out, "--max-steps", 1,
                       "--lora-config", options, *TRAIN)  # fmt: skip
    assert code == 0, err
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["target_modules"]) == (3, 6, ".*\\.(q|v)_proj")


def test_token_loss_with_logits_to_keep_equals_the_full_computation(tiny_model_dir):
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer))
    from peftkit.cli.data import collate

    rows = [
        {"prompt": "what color is the sky ?", "completion": "blue"},
        {"prompt": "the sea ?", "completion": "blue"},
    ]
    batch = collate(encode_rows(rows, tokenizer, None, "t"), tokenizer.pad_token_id)
    ours = _token_loss_sum(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    full = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), reduction="sum"
    )
    assert torch.allclose(ours, full, atol=1e-5), (ours, full)


def _adapter_tensors(folder):
    return load_file(folder / "adapter_model.safetensors")


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tiny_model_dir, prompt_data, cli):
    common = ("--model", tiny_model_dir, "--data", prompt_data, "--max-steps", 2, "--lr", 1e-2, *TRAIN)
    assert cli("train", *common, "-o", tmp_path / "big", "--batch-size", 4)[0] == 0
    assert cli("train", *common, "-o", tmp_path / "acc", "--batch-size", 2, "--grad-accum", 2)[0] == 0
    big, acc = _metrics(tmp_path / "big"), _metrics(tmp_path / "acc")
    assert [r["loss"] for r in big] == pytest.approx([r["loss"] for r in acc], abs=1e-5)
    a, b = _adapter_tensors(tmp_path / "big"), _adapter_tensors(tmp_path / "acc")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_gradient_checkpointing_gives_the_same_training(tmp_path, tiny_model_dir, prompt_data, cli):
    common = ("--model", tiny_model_dir, "--data", prompt_data, "--max-steps", 2, "--lr", 1e-2, *TRAIN)
    assert cli("train", *common, "-o", tmp_path / "plain")[0] == 0
    code, _, err = cli("train", *common, "-o", tmp_path / "ckpt", "--gradient-checkpointing")
    assert code == 0, err
    a, b = _adapter_tensors(tmp_path / "plain"), _adapter_tensors(tmp_path / "ckpt")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_checkpoints_and_resume_reproduce_an_uninterrupted_run(tmp_path, tiny_model_dir, prompt_data, cli):
    common = (
        "--model",
        tiny_model_dir,
        "--data",
        prompt_data,
        "--max-steps",
        6,
        "--lr",
        1e-2,
        "--batch-size",
        2,
    )
    assert cli("train", *common, *TRAIN, "-o", tmp_path / "straight")[0] == 0
    run = tmp_path / "resumed"
    code, _, err = cli("train", *common, *TRAIN, "-o", run, "--save-steps", 2, "--save-total-limit", 2)
    assert code == 0, err
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]  # 2 kept
    assert (run / "checkpoint-4" / "adapter_config.json").is_file()  # each checkpoint is an adapter
    code, _, err = cli("train", *common, *TRAIN, "-o", run, "--resume", run / "checkpoint-2")
    assert code == 0, err
    assert [r["step"] for r in _metrics(run)] == [1, 2, 3, 4, 5, 6]  # steps 3-6 logged once
    a, b = _adapter_tensors(tmp_path / "straight"), _adapter_tensors(run)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert [r["loss"] for r in _metrics(run)] == pytest.approx(
        [r["loss"] for r in _metrics(tmp_path / "straight")]
    )


def test_resume_latest_and_its_errors(tmp_path, tiny_model_dir, prompt_data, cli):
    common = ("--model", tiny_model_dir, "--data", prompt_data, *TRAIN)
    code, _, err = cli("train", *common, "-o", tmp_path / "none", "--max-steps", 2, "--resume", "latest")
    assert code == 2 and "there is no checkpoint" in err
    code, _, err = cli("train", *common, "-o", tmp_path / "x", "--resume", tmp_path)
    assert code == 2 and "not a checkpoint folder" in err
    run = tmp_path / "run"
    assert cli("train", *common, "-o", run, "--max-steps", 3, "--save-steps", 2)[0] == 0
    code, _, err = cli("train", *common, "-o", run, "--max-steps", 2, "--resume", "latest")
    assert code == 2 and "checkpoint is at step 2" in err
    code, _, _ = cli("train", *common, "-o", run, "--max-steps", 5, "--resume", "latest")
    assert code == 0 and [r["step"] for r in _metrics(run)][-1] == 5


def test_existing_adapter_is_not_overwritten_silently(tmp_path, tiny_model_dir, prompt_data, cli):
    common = (
        "train",
        "--model",
        tiny_model_dir,
        "--data",
        prompt_data,
        "-o",
        tmp_path,
        "--max-steps",
        1,
        *TRAIN,
    )
    assert cli(*common)[0] == 0
    code, _, err = cli(*common)
    assert code == 2 and "already holds an adapter" in err and "--overwrite" in err
    assert cli(*common, "--overwrite")[0] == 0


def test_load_in_4bit_without_bitsandbytes_says_which_extra(
    tmp_path, tiny_model_dir, prompt_data, cli, monkeypatch
):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    code, _, err = cli(
        "train",
        "--model",
        tiny_model_dir,
        "--data",
        prompt_data,
        "-o",
        tmp_path / "q",
        "--load-in-4bit",
        *TRAIN,
    )
    assert code == 2
    assert (
        "--load-in-4bit (QLoRA) needs the 'bitsandbytes' package" in err
        and "pip install 'peftkit[quant]'" in err
    )


def test_metrics_file_is_jsonl_of_known_fields(tmp_path, tiny_model_dir, prompt_data, cli):
    out = tmp_path / "run"
    extra = (
        "--eval-data",
        write_jsonl(tmp_path / "ev.jsonl", [{"prompt": "what color is the sea ?", "completion": "blue"}]),
    )
    assert (
        cli(
            "train",
            "--model",
            tiny_model_dir,
            "--data",
            prompt_data,
            "-o",
            out,
            "--max-steps",
            2,
            *extra,
            *TRAIN,
        )[0]
        == 0
    )
    records = _metrics(out)
    assert set(records[0]) == {"step", "epoch", "loss", "lr", "tokens", "grad_norm"}
    assert records[-1].keys() == {"step", "epoch", "eval_loss"} and records[-1]["step"] == 2


def test_qlora_trains_on_a_4bit_base(tmp_path, tiny_model_dir, prompt_data, cli):
    pytest.importorskip("bitsandbytes")  # the quant extra; without it the error test above applies
    out = tmp_path / "qlora"
    code, _, err = cli("train", "--model", tiny_model_dir, "--data", prompt_data, "-o", out, "--max-steps", 2,
                       "--load-in-4bit", "--gradient-checkpointing", "--lr", 5e-2, *TRAIN)  # fmt: skip
    assert code == 0, err
    assert all(math.isfinite(r["loss"]) for r in _metrics(out))
    weights = _adapter_tensors(out)
    assert weights and all(v.dtype == torch.float32 for v in weights.values())
    assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k)


def test_keep_freed_memory_flag_applies_the_setting_or_says_why_not(
    tmp_path, tiny_model_dir, prompt_data, cli, monkeypatch
):
    import peftkit.cli.train as train_command

    calls = []
    monkeypatch.setattr(train_command, "keep_freed_memory", lambda: calls.append("applied"))
    args = ("train", "--model", tiny_model_dir, "--data", prompt_data, "--max-steps", 1, *TRAIN)
    code, _, err = cli(*args, "-o", tmp_path / "a", "--keep-freed-memory")
    assert code == 0, err
    assert calls == ["applied"]
    code, _, err = cli(*args, "-o", tmp_path / "b")
    assert code == 0 and calls == ["applied"]  # not without the flag

    def unsupported():
        raise OSError("keep_freed_memory needs glibc's malloc")

    monkeypatch.setattr(train_command, "keep_freed_memory", unsupported)
    code, _, err = cli(*args, "-o", tmp_path / "c", "--keep-freed-memory")
    assert code != 0 and "--keep-freed-memory: keep_freed_memory needs glibc's malloc" in err
    assert not (tmp_path / "c" / "adapter_config.json").exists()
