"""`peftkit info` on adapters that peft itself wrote, of several methods, and on things that are not adapters."""

from __future__ import annotations

import json

import pytest
from tests.conftest import perturb_adapter_weights, tiny_llama

from peftkit.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peftkit.utils.peft_types import PeftType


def _peft_adapter(folder, config, safe: bool = True):
    """Save an adapter made by peft; return peft's own state dict of it (what the file should hold)."""
    import peft

    model = peft.get_peft_model(tiny_llama(), config)
    perturb_adapter_weights(model)
    model.save_pretrained(folder, safe_serialization=safe)
    return peft.get_peft_model_state_dict(model)


def _expected_support(method: str) -> str:
    implemented = PeftType(method) in PEFT_TYPE_TO_CONFIG_MAPPING
    return "yes" if implemented else f"no (method {method} not implemented)"


def _info(cli, *args):
    code, out, err = cli("info", *args, "--json")
    assert code == 0, err
    return json.loads(out)


def _methods():
    import peft

    return {
        "LORA": peft.LoraConfig(
            r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        ),
        "IA3": peft.IA3Config(
            target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"], task_type="CAUSAL_LM"
        ),
        "LOHA": peft.LoHaConfig(r=6, alpha=12, target_modules=["q_proj", "o_proj"], task_type="CAUSAL_LM"),
        "LOKR": peft.LoKrConfig(r=2, alpha=4, target_modules=["up_proj"], task_type="CAUSAL_LM"),
        "PROMPT_TUNING": peft.PromptTuningConfig(num_virtual_tokens=5, task_type="CAUSAL_LM"),
    }


@pytest.mark.parametrize("method", ["LORA", "IA3", "LOHA", "LOKR", "PROMPT_TUNING"])
def test_info_describes_peft_adapters_of_every_method(tmp_path, cli, method):
    config = _methods()[method]
    state = _peft_adapter(tmp_path, config)
    report = _info(cli, tmp_path)
    assert report["method"] == method
    assert report["task_type"] == "CAUSAL_LM"
    assert report["loads_in_peftkit"] == _expected_support(method)
    assert report["file_format"] == "safetensors" and report["file"] == "adapter_model.safetensors"
    assert report["tensors"] == len(state)
    assert report["parameters"] == sum(t.numel() for t in state.values())
    assert report["bytes"] == sum(t.numel() * t.element_size() for t in state.values())
    targets = getattr(config, "target_modules", None)
    if targets is not None:
        assert sorted(report["target_modules"]) == sorted(targets)
        patterns = {g["pattern"] for g in report["modules"]}
        assert patterns == {
            f"model.layers.*.{'self_attn' if t.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{t}"
            for t in targets
        }
        assert all(g["count"] == 2 for g in report["modules"])  # 2 layers each


def test_info_ranks_and_alphas_per_pattern(tmp_path, cli):
    import peft

    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 2},
        alpha_pattern={"layers.1.self_attn.q_proj": 3}, use_dora=True, task_type="CAUSAL_LM",
    )  # fmt: skip
    _peft_adapter(tmp_path, config)
    report = _info(cli, tmp_path)
    groups = {g["pattern"]: g for g in report["modules"]}
    v = groups["model.layers.*.self_attn.v_proj"]
    assert (v["rank"], v["alpha"], v["count"]) == (2, 8, 2)
    assert v["tensors"]["lora_A.weight"] == [2, 32] and "lora_magnitude_vector" in v["tensors"]
    q = groups["model.layers.*.self_attn.q_proj"]
    assert q["rank"] == 4 and q["alpha"] in (3, 8)  # the alpha of the first module of the pattern
    assert report["rank_pattern"] == {"v_proj": 2} and report["alpha_pattern"] == {
        "layers.1.self_attn.q_proj": 3
    }


def test_info_human_readable_output(tmp_path, cli):
    import peft

    _peft_adapter(tmp_path, peft.LoHaConfig(r=6, alpha=12, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    code, out, err = cli("info", tmp_path)
    assert code == 0, err
    lines = {
        line.split()[0] + " " + line.split()[1]: line for line in out.splitlines() if len(line.split()) > 1
    }
    assert "LOHA" in lines["method LOHA"]
    assert f"loads in peftkit {_expected_support('LOHA')}" in out
    assert "rank / alpha     r=6, alpha=12" in out
    assert "model.layers.*.self_attn.q_proj  x2" in out and "hada_w1_a [32, 6]" in out
    assert "written by peft 0.21" in out


def test_info_reads_bin_files_and_lists_sub_folder_adapters(tmp_path, cli):
    import peft

    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    model.add_adapter("second", peft.LoraConfig(r=3, target_modules=["k_proj"]))
    model.save_pretrained(tmp_path, safe_serialization=False)
    report = _info(cli, tmp_path)
    assert report["file_format"] == "pytorch (.bin)" and report["r"] == 2
    assert report["other_adapters"] == ["second"]
    assert _info(cli, tmp_path / "second")["r"] == 3
    assert report["task_type"] is None


def test_info_on_a_peftkit_trained_adapter(trained_adapter, tiny_model_dir, cli):
    report = _info(cli, trained_adapter)
    assert report["loads_in_peftkit"] == "yes"
    assert report["base_model"] == str(tiny_model_dir)
    assert "peftkit_version" in report["metadata"]
    code, out, _ = cli("info", trained_adapter)
    assert code == 0 and "written by peftkit " in out and "in peft 0.21.2's format" in out
    loaded = _info(cli, trained_adapter, "--model", tiny_model_dir)
    assert loaded["loads_in_peftkit"] == f"yes (loaded onto {tiny_model_dir})"


def test_info_reports_an_adapter_that_does_not_fit_the_model(tmp_path, tiny_model_dir, cli):
    import peft

    # made for a vocabulary of 128 tokens; the tiny CLI model has fewer, so the embedding factors do not fit
    _peft_adapter(tmp_path, peft.LoraConfig(r=4, target_modules=["embed_tokens"]))
    assert _info(cli, tmp_path)["loads_in_peftkit"] == "yes"  # statically fine
    code, out, err = cli("info", tmp_path, "--model", tiny_model_dir, "--json")
    report = json.loads(out)
    assert report["loads_in_peftkit"].startswith("no (Could not load the adapter")
    assert "embed_tokens" in report["loads_in_peftkit"]
    # the report is printed, and the exit status says it does not load
    assert code == 1 and f"the adapter does not load onto {tiny_model_dir}" in err


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "is not a valid adapter: there is no adapter_config.json"),
        (lambda p: p.write_text("x"), "is a file; an adapter is a folder"),
    ],
)
def test_info_errors_on_non_adapters(tmp_path, cli, setup, message):
    target = tmp_path / "thing"
    setup(target)
    code, out, err = cli("info", target)
    assert code == 2 and message in err and not out


def test_info_errors_on_broken_adapters(tmp_path, cli):
    import peft

    _peft_adapter(tmp_path, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4])
    code, _, err = cli("info", tmp_path)
    assert code == 2 and "not a safetensors file" in err
    weights.unlink()
    code, _, err = cli("info", tmp_path)
    assert code == 2 and "no adapter_model.safetensors/.bin" in err
    (tmp_path / "adapter_config.json").write_text("{broken")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    code, _, err = cli("info", tmp_path)
    assert code == 2 and "not valid JSON" in err
    (tmp_path / "adapter_config.json").write_text('{"r": 8}')
    code, _, err = cli("info", tmp_path)
    assert code == 2 and "has no 'peft_type'" in err


def test_info_points_at_sub_folders_when_the_folder_itself_is_not_an_adapter(tmp_path, cli):
    import peft

    _peft_adapter(tmp_path / "one", peft.LoraConfig(r=2, target_modules=["q_proj"]))
    code, _, err = cli("info", tmp_path)
    assert code == 2 and "Its sub-folders hold adapters: one" in err
