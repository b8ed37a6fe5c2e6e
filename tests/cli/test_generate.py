"""`peftkit generate`: base + adapter(s), merged or not, chat or plain prompts."""

from __future__ import annotations

import pytest
import torch

from peftkit import PeftModel
from peftkit.cli.data import prompt_ids, user_prompt_row
from peftkit.cli.generation import generate_answers

from .conftest import build_model, build_tokenizer

QUESTION = "what color is the sky ?"


def _answers(stdout: str) -> list[str]:
    lines = stdout.strip().splitlines()
    return [lines[i + 1] for i, line in enumerate(lines) if line.startswith(">>> ")]


def _expected(adapters, chat: bool = True, questions=(QUESTION,)) -> list[str]:
    """What the Python API gives for the same prompts (greedy, 8 new tokens)."""
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer))
    if adapters:
        model = PeftModel.from_pretrained(model, adapters[0], adapter_name="a0")
        for i, folder in enumerate(adapters[1:], start=1):
            model.load_adapter(folder, adapter_name=f"a{i}")
        model.base_model.set_adapter([f"a{i}" for i in range(len(adapters))])
    ids = [prompt_ids(user_prompt_row(q, tokenizer, chat), tokenizer) for q in questions]
    return generate_answers(model, tokenizer, ids, max_new_tokens=8)


def test_generate_with_an_adapter_matches_the_python_api(tiny_model_dir, trained_adapter, cli):
    code, out, err = cli("generate", "--model", tiny_model_dir, "--adapter", trained_adapter, "--prompt", QUESTION,
                         "--prompt", "what color is the snow ?", "--max-new-tokens", 8, "--device", "cpu")  # fmt: skip
    assert code == 0, err
    expected = _expected([trained_adapter], questions=(QUESTION, "what color is the snow ?"))
    assert _answers(out) == expected
    assert out.splitlines()[0] == f">>> {QUESTION}"


def test_merge_flag_gives_the_same_answers(tiny_model_dir, trained_adapter, cli):
    args = ("generate", "--model", tiny_model_dir, "--adapter", trained_adapter, "--prompt", QUESTION,
            "--max-new-tokens", 8, "--no-chat")  # fmt: skip
    code, unmerged, _ = cli(*args)
    code_m, merged, err = cli(*args, "--merge")
    assert code == code_m == 0, err
    assert _answers(merged) == _answers(unmerged) == _expected([trained_adapter], chat=False)


def test_several_adapters_are_active_together(tmp_path, tiny_model_dir, trained_adapter, prompt_data, cli):
    second = tmp_path / "second"
    code, _, err = cli("train", "--model", tiny_model_dir, "--data", prompt_data, "-o", second, "--max-steps", 3,
                       "--lr", 5e-2, "--seed", 7, "--no-progress")  # fmt: skip
    assert code == 0, err
    code, out, err = cli("generate", "--model", tiny_model_dir, "--adapter", trained_adapter, "--adapter", second,
                         "--prompt", QUESTION, "--max-new-tokens", 8)  # fmt: skip
    assert code == 0, err
    assert _answers(out) == _expected([trained_adapter, second])


def test_compare_base_prints_both_answers(tiny_model_dir, trained_adapter, cli):
    code, out, err = cli("generate", "--model", tiny_model_dir, "--adapter", trained_adapter, "--prompt", QUESTION,
                         "--max-new-tokens", 8, "--compare-base")  # fmt: skip
    assert code == 0, err
    base_line = next(line for line in out.splitlines() if line.startswith("[base]"))
    adapter_line = next(line for line in out.splitlines() if line.startswith("[adapter]"))
    assert base_line.removeprefix("[base]").strip() == _expected([])[0]
    assert adapter_line.removeprefix("[adapter]").strip() == _expected([trained_adapter])[0]


def test_prompts_file_and_sampling(tmp_path, tiny_model_dir, cli):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{QUESTION}\n\nwhat color is the sun ?\n")
    torch.manual_seed(0)
    code, out, err = cli("generate", "--model", tiny_model_dir, "--prompts-file", prompts, "--temperature", 0.7,
                         "--top-p", 0.9, "--max-new-tokens", 4)  # fmt: skip
    assert code == 0, err
    assert [line for line in out.splitlines() if line.startswith(">>>")] == [
        f">>> {QUESTION}",
        ">>> what color is the sun ?",
    ]


@pytest.mark.parametrize(
    "extra, message",
    [
        ((), "No prompt given"),
        (("--prompt", "x", "--merge"), "--merge needs at least one --adapter"),
        (("--prompt", "x", "--temperature", 0), "--temperature must be positive"),
        (("--prompt", "x", "--top-p", 0.5), "--top-p needs --temperature"),
        (("--prompts-file", "/nonexistent/p.txt"), "The prompts file '/nonexistent/p.txt' does not exist"),
        (
            ("--prompt", "x", "--adapter", "/nonexistent/adapter"),
            "adapter folder '/nonexistent/adapter' does not exist",
        ),
    ],
)
def test_generate_errors(tiny_model_dir, cli, extra, message):
    code, _, err = cli("generate", "--model", tiny_model_dir, *extra)
    assert code == 2
    assert message in err
