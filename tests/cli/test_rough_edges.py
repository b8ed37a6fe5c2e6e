"""The command line as a new user meets it: one-line errors, defaults in the help, offline Hub ids, paths
checked before the model loads, merging without a tokenizer, corrupt adapters, resuming with other
flags, Ctrl-C during training, and how many checkpoints are kept."""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file, save_file

import peftkit.cli.training as training
from peftkit.cli import build_parser
from peftkit.cli.checkpoints import save_checkpoint

TRAIN = ("--device", "cpu", "--no-progress")


def test_a_mistyped_flag_is_one_line_naming_the_closest_flag(cli):
    code, out, err = cli("train", "--learning-rte", "1e-3")
    assert code == 2 and not out
    assert err == "peftkit train: error: unknown flag --learning-rte; did you mean --learning-rate?\n"
    code, _, err = cli("trian", "--data", "x")
    assert code == 2 and "did you mean 'train'?" in err and err.count("\n") == 1 and "usage:" not in err
    code, _, err = cli("merge", "--adapter", "x")
    assert code == 2 and err.count("\n") == 1 and "required: --output-dir/-o" in err


def test_every_flag_has_help_that_states_its_default():
    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"train", "generate", "merge", "info", "diff", "export", "import", "serve", "demo"} <= set(
        subcommands
    )
    for name, sub in subcommands.items():
        for action in sub._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            flag = f"{name} {action.option_strings[-1]}"
            assert action.help, flag
            if action.nargs != 0 and not action.required:  # switches are off unless given
                assert "default" in action.help, flag
    help_text = subcommands["train"].format_help()
    assert "peak learning rate (default: 2e-4)" in help_text and "LoRA rank. (default: 8)" in help_text


def test_an_unknown_hub_id_fails_at_once_when_offline(tmp_path, prompt_data, cli, monkeypatch):
    import transformers

    import peftkit.cli.hub_access as hub_access

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_access, "hub_reachable", lambda: False)  # no network, and nobody said so

    def no_network(*args, **kwargs):
        raise AssertionError("the Hub was asked although it cannot be reached")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_network)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", no_network)
    code, _, err = cli("train", "--model", "nobody/no-model", "--data", prompt_data, "-o", tmp_path / "o")
    assert code == 2 and "The model 'nobody/no-model' is not a local path" in err
    assert "cannot be reached (offline)" in err
    code, _, err = cli("info", "nobody/no-adapter")
    assert code == 2 and "The adapter 'nobody/no-adapter' is not a local path" in err


@pytest.mark.parametrize("command", ["generate", "merge"])
def test_a_bad_adapter_path_is_reported_before_the_model_loads(tmp_path, cli, monkeypatch, command):
    import importlib

    module = importlib.import_module(f"peftkit.cli.{command}")

    def no_loading(*args, **kwargs):
        raise AssertionError("the base model was loaded before the adapter path was checked")

    monkeypatch.setattr(module, "resolve_model", no_loading)
    extra = ("--prompt", "hi") if command == "generate" else ("-o", tmp_path / "merged")
    code, _, err = cli(command, "--adapter", tmp_path / "no-such-adapter", *extra)
    assert code == 2 and "does not exist" in err


def test_merge_works_without_a_tokenizer_and_says_so(tmp_path, tiny_model_dir, trained_adapter, cli):
    base = tmp_path / "weights-only"
    base.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, base / name)
    code, out, err = cli("merge", "--model", base, "--adapter", trained_adapter, "-o", tmp_path / "merged")
    assert code == 0, err
    assert "No tokenizer was copied" in out
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert not (tmp_path / "merged" / "tokenizer.json").exists()


def test_info_reads_the_whole_file(tmp_path, trained_adapter, cli):
    weights = trained_adapter / "adapter_model.safetensors"
    tensors = {k: v.clone() for k, v in load_file(weights).items()}  # copies: the file changes below
    good = weights.read_bytes()
    weights.write_bytes(good[:-100])  # the header is intact; the data is cut short
    code, out, err = cli("info", trained_adapter)
    assert code == 2 and "is truncated" in err and "Save or download the adapter again" in err and not out
    first = sorted(tensors)[0]
    tensors[first][0, 0] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})
    code, out, err = cli("info", trained_adapter)
    assert code == 1 and "non-finite       1 NaN/inf values in 1 tensor(s)" in out
    assert "holds 1 NaN/inf values" in err


def test_resuming_with_a_changed_lora_flag_names_the_flag_and_the_ways_on(
    tmp_path, tiny_model_dir, prompt_data, cli
):
    common = ("--model", tiny_model_dir, "--data", prompt_data, *TRAIN, "-o", tmp_path / "run")
    assert cli("train", *common, "--r", 4, "--max-steps", 3, "--save-steps", 2)[0] == 0
    code, _, err = cli("train", *common, "--r", 8, "--max-steps", 5, "--resume", "latest")
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert "--r 8 (the checkpoint has 4): differs from" in err and "checkpoint-2" in err
    assert "To resume, drop it" in err and "drop --resume and pass --overwrite" in err
    code, out, err = cli("train", *common, "--max-steps", 5, "--resume", "latest")  # takes the checkpoint's r
    assert code == 0, err
    assert (
        load_file(tmp_path / "run" / "adapter_model.safetensors")[
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
        ].shape[0]
        == 4
    )
    assert f"Resumed from {tmp_path / 'run' / 'checkpoint-2'}: step 2 of 5" in out
    assert "Trained 3 steps (steps 3-5 of 5, resumed from step 2)" in out
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    code, _, err = cli("train", *common[2:], "--model", other, "--max-steps", 6, "--resume", "latest")
    assert code == 2 and f"--model {other} differs from" in err and f"trained on {tiny_model_dir}" in err


def _interrupt_at(monkeypatch, steps: set[int], times: int = 1):
    """Deliver `times` Ctrl-C (SIGINT) right after each optimizer step whose number is in `steps`."""
    real = training._optimizer_step
    taken = []

    def step(*args, **kwargs):
        record = real(*args, **kwargs)
        taken.append(1)
        if len(taken) in steps:
            for _ in range(times):
                signal.raise_signal(signal.SIGINT)
        return record

    monkeypatch.setattr(training, "_optimizer_step", step)


def test_ctrl_c_saves_a_checkpoint_and_prints_the_command_that_resumes(
    tmp_path, tiny_model_dir, prompt_data, cli, monkeypatch
):
    common = (
        "train",
        "--model",
        tiny_model_dir,
        "--data",
        prompt_data,
        *TRAIN,
        "--max-steps",
        5,
        "--lr",
        1e-2,
    )
    assert cli(*common, "-o", tmp_path / "straight")[0] == 0
    _interrupt_at(monkeypatch, {2})
    code, out, err = cli(*common, "-o", tmp_path / "run")
    assert code == 130, err
    assert "stopping after this step to save a checkpoint" in err
    assert (tmp_path / "run" / "checkpoint-2" / "trainer_state.pt").is_file()
    assert not (tmp_path / "run" / "adapter_config.json").exists()  # the final adapter is not written
    assert (
        f"Interrupted after step 2 of 5 (trained 2 steps in this run); checkpoint saved to {tmp_path / 'run' / 'checkpoint-2'}"
        in out
    )
    command = out.split("Resume with:\n", 1)[1].strip()
    assert command == shlex.join(
        [
            "peftkit",
            *map(str, common),
            "-o",
            str(tmp_path / "run"),
            "--resume",
            str(tmp_path / "run" / "checkpoint-2"),
        ]
    )
    monkeypatch.undo()
    code, out, err = cli(*shlex.split(command)[1:])
    assert code == 0, err
    assert "Trained 3 steps (steps 3-5 of 5, resumed from step 2)" in out
    straight, resumed = (
        load_file(tmp_path / "straight" / "adapter_model.safetensors"),
        load_file(tmp_path / "run" / "adapter_model.safetensors"),
    )
    assert all(torch.allclose(straight[k], resumed[k], atol=1e-6) for k in straight)


def test_a_second_ctrl_c_stops_at_once_without_saving(
    tmp_path, tiny_model_dir, prompt_data, cli, monkeypatch
):
    _interrupt_at(monkeypatch, {2}, times=2)
    code, _, err = cli(
        "train",
        "--model",
        tiny_model_dir,
        "--data",
        prompt_data,
        *TRAIN,
        "--max-steps",
        5,
        "-o",
        tmp_path / "run",
    )
    assert code == 130 and "peftkit train: interrupted" in err
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_only_the_newest_checkpoints_are_kept_by_default(tmp_path, tiny_model_dir, prompt_data, cli):
    common = (
        "train",
        "--model",
        tiny_model_dir,
        "--data",
        prompt_data,
        *TRAIN,
        "--max-steps",
        5,
        "--save-steps",
        1,
    )
    code, out, _ = cli(*common, "-o", tmp_path / "default")
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "default").glob("checkpoint-*")) == [
        f"checkpoint-{i}" for i in (2, 3, 4)
    ]
    assert (
        f"Checkpoints in {tmp_path / 'default'}: checkpoint-2, checkpoint-3, checkpoint-4 (the newest 3 kept"
        in out
    )
    assert cli(*common, "-o", tmp_path / "all", "--save-total-limit", 0)[0] == 0
    assert len(list((tmp_path / "all").glob("checkpoint-*"))) == 4


class _Broken:
    def save_pretrained(self, folder):
        (folder / "adapter_model.safetensors").write_bytes(b"half")
        raise OSError("disk full")


def test_an_interrupted_checkpoint_save_leaves_no_folder(tmp_path):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_Broken(), optimizer, scheduler, 7, tmp_path, keep=3)
    assert list(tmp_path.iterdir()) == []
