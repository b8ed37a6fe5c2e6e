"""LoRA flags generated from LoraConfig: parsing each kind of field, file + flag precedence."""

from __future__ import annotations

import argparse
import json

import pytest

from peftkit.cli.errors import CliError
from peftkit.cli.lora_options import add_lora_arguments, build_lora_config


def _config(*argv: str):
    parser = argparse.ArgumentParser()
    add_lora_arguments(parser)
    return build_lora_config(parser.parse_args(list(argv)))


def test_defaults_are_lora_configs_defaults():
    from peftkit import LoraConfig

    ours, plain = _config(), LoraConfig(task_type="CAUSAL_LM")
    assert ours.to_dict() == plain.to_dict()


@pytest.mark.parametrize(
    "argv, field, value",
    [
        (["--target-modules", "all-linear"], "target_modules", "all-linear"),
        (["--target-modules", "q_proj"], "target_modules", {"q_proj"}),
        (["--target-modules", "q_proj", "v_proj"], "target_modules", {"q_proj", "v_proj"}),
        (["--target-modules", r".*\.q_proj"], "target_modules", r".*\.q_proj"),
        (["--rank", "12"], "r", 12),
        (["--lora-alpha", "3"], "lora_alpha", 3),
        (["--lora-dropout", "0.25"], "lora_dropout", 0.25),
        (["--use-rslora"], "use_rslora", True),
        (["--use-rslora", "false"], "use_rslora", False),
        (["--init-lora-weights", "gaussian"], "init_lora_weights", "gaussian"),
        (["--init-lora-weights", "false"], "init_lora_weights", False),
        (["--layers-to-transform", "0", "1"], "layers_to_transform", [0, 1]),
        (["--modules-to-save", "lm_head"], "modules_to_save", ["lm_head"]),
        (["--alpha-pattern", '{"q_proj": 32}'], "alpha_pattern", {"q_proj": 32}),
        (["--bias", "lora_only"], "bias", "lora_only"),
    ],
)
def test_flag_kinds(argv, field, value):
    assert getattr(_config(*argv), field) == value


def test_file_then_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"r": 2, "lora_alpha": 7, "peft_type": "LORA", "task_type": "CAUSAL_LM"}))
    config = _config("--lora-config", str(path), "--lora-alpha", "9")
    assert (config.r, config.lora_alpha) == (2, 9)


def test_invalid_combination_is_a_cli_error():
    with pytest.raises(CliError, match="Invalid LoRA options: layers_to_transform cannot be used"):
        _config("--target-modules", r".*q_proj", "--layers-to-transform", "0")
