"""`peftkit merge`: a plain transformers folder whose logits equal peft's merge_and_unload."""

from __future__ import annotations

import json

import torch

from .conftest import build_model, build_tokenizer


def test_merged_folder_loads_without_peftkit_and_matches_peft(tmp_path, tiny_model_dir, trained_adapter, cli):
    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    code, stdout, err = cli("merge", "--model", tiny_model_dir, "--adapter", trained_adapter, "-o", out)
    assert code == 0, err
    assert "AutoModelForCausalLM.from_pretrained" in stdout
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    theirs = peft.PeftModel.from_pretrained(
        build_model(len(build_tokenizer())), trained_adapter
    ).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(out)  # the tokenizer was saved too
    batch = tokenizer(
        ["what color is the sky ?", "what color is the sea ? blue"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        ours_logits = merged(**batch).logits
        their_logits = theirs(**batch).logits
        base_logits = build_model(len(tokenizer))(**batch).logits
    assert torch.allclose(ours_logits, their_logits, atol=1e-5)
    assert not torch.allclose(ours_logits, base_logits, atol=1e-3)  # the adapter changed something


def test_merge_two_adapters_and_dtype(tmp_path, tiny_model_dir, trained_adapter, prompt_data, cli):
    import peft
    from transformers import AutoModelForCausalLM

    second = tmp_path / "second"
    assert cli("train", "--model", tiny_model_dir, "--data", prompt_data, "-o", second, "--max-steps", 2,
               "--lr", 5e-2, "--seed", 3, "--no-progress")[0] == 0  # fmt: skip
    out = tmp_path / "merged"
    code, _, err = cli("merge", "--model", tiny_model_dir, "--adapter", trained_adapter, "--adapter", second,
                       "-o", out, "--dtype", "bfloat16")  # fmt: skip
    assert code == 0, err
    merged = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert merged.dtype == torch.bfloat16
    theirs = peft.PeftModel.from_pretrained(
        build_model(len(build_tokenizer())), trained_adapter, adapter_name="a"
    )
    theirs.load_adapter(second, adapter_name="b")
    reference = theirs.merge_and_unload(adapter_names=["a", "b"]).to(torch.bfloat16)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(merged.state_dict()[name], tensor), name


def test_merge_refuses_to_overwrite_and_bad_inputs(tmp_path, tiny_model_dir, trained_adapter, cli):
    out = tmp_path / "merged"
    assert cli("merge", "--model", tiny_model_dir, "--adapter", trained_adapter, "-o", out)[0] == 0
    code, _, err = cli("merge", "--model", tiny_model_dir, "--adapter", trained_adapter, "-o", out)
    assert code == 2 and "already holds a model" in err
    code, _, err = cli("merge", "--model", tiny_model_dir, "--adapter", tiny_model_dir, "-o", tmp_path / "x")
    assert code == 2 and "is not an adapter folder (no adapter_config.json)" in err
    code, _, err = cli(
        "merge", "--model", trained_adapter, "--adapter", trained_adapter, "-o", tmp_path / "y"
    )
    assert code == 2 and "It is an adapter folder: pass it with --adapter" in err
    code, _, err = cli("merge", "--model", tiny_model_dir, "-o", tmp_path / "z")
    assert code == 2 and "--adapter" in err  # argparse: the required flag is named
