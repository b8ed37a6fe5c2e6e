"""`peftkit export --format gguf`, `peftkit import --from gguf`, `info` on GGUF files and `peftkit diff`."""

from __future__ import annotations

import json

import gguf
import torch
from safetensors.torch import load_file

from peftkit import LoraConfig, get_peft_model

from .conftest import build_model


def _safetensors(folder):
    return load_file(folder / "adapter_model.safetensors")


def test_export_import_round_trip_on_the_command_line(tmp_path, trained_adapter, cli):
    out = tmp_path / "adapter.gguf"
    code, stdout, err = cli(
        "export", "--format", "gguf", trained_adapter, "-o", out
    )  # base: the recorded folder
    assert code == 0, err
    assert "4 LoRA modules (8 F32), architecture llama, alpha 8" in stdout
    fields = {k: f.contents() for k, f in gguf.GGUFReader(out).fields.items()}
    assert (fields["general.type"], fields["adapter.type"], fields["general.architecture"]) == (
        "adapter",
        "lora",
        "llama",
    )
    code, _, err = cli("export", trained_adapter, "-o", out)
    assert code == 2 and "exists; pass --overwrite" in err
    code, stdout, err = cli("import", "--from", "gguf", out, "-o", tmp_path / "back")
    assert code == 0, err
    original, back = _safetensors(trained_adapter), _safetensors(tmp_path / "back")
    assert sorted(original) == sorted(back) and all(torch.equal(original[k], back[k]) for k in original)


def test_export_types_and_refusals(tmp_path, trained_adapter, tiny_model_dir, cli):
    code, stdout, err = cli("export", trained_adapter, "-o", tmp_path / "q8.gguf", "--dtype", "q8_0")
    assert code == 0, err
    assert "Q8_0" in stdout and "F16" in stdout  # rank-8 B factors are too short for Q8_0 blocks
    model = get_peft_model(build_model(32), LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    model.save_pretrained(tmp_path / "dora")
    code, _, err = cli("export", tmp_path / "dora", "-o", tmp_path / "d.gguf", "--base", tiny_model_dir)
    assert code == 2 and "cannot be exported to llama.cpp: DoRA" in err
    assert "\n" not in err.strip()  # one line, no traceback
    code, _, err = cli("export", tmp_path / "missing", "-o", tmp_path / "m.gguf")
    assert code == 2 and "does not exist" in err
    code, _, err = cli("export", trained_adapter, "-o", tmp_path / "x.gguf", "--dtype", "q4_0")
    assert code == 2 and "invalid choice: 'q4_0'" in err


def test_info_describes_gguf_adapters(tmp_path, trained_adapter, cli):
    out = tmp_path / "adapter.gguf"
    assert cli("export", trained_adapter, "-o", out)[0] == 0
    code, stdout, err = cli("info", out)
    assert code == 0, err
    assert "gguf (llama.cpp LoRA adapter)" in stdout and "architecture     llama" in stdout
    assert "blk.*.attn_q.weight  x2  r=8" in stdout and "yes, as a PEFT adapter folder" in stdout
    code, stdout, _ = cli("info", out, "--json")
    report = json.loads(stdout)
    assert report["alpha"] == 8 and report["dtypes"] == {"F32": 8} and report["base_model"] is not None
    code, stdout, err = cli("info", out, "--model", report["base_model"], "--json")
    assert code == 0 and json.loads(stdout)["loads_in_peftkit"].startswith("yes (loaded onto")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF but not really")
    code, _, err = cli("info", tmp_path / "junk.gguf")
    assert code == 2 and "is not a readable GGUF file" in err


def test_diff_compares_adapters_module_by_module(tmp_path, trained_adapter, cli):
    out = tmp_path / "adapter.gguf"
    assert cli("export", trained_adapter, "-o", out)[0] == 0
    code, stdout, err = cli("diff", trained_adapter, out, "--json")  # a folder against its GGUF export
    assert code == 0, err
    same = json.loads(stdout)
    assert len(same["modules"]) == 4 and not same["only_a"] and not same["only_b"]
    for m in same["modules"]:
        assert (
            m["cosine"] > 1 - 1e-6 and m["norm_diff"] < 1e-5 * m["norm_a"] and m["rank_a"] == m["rank_b"] == 8
        )
    other = tmp_path / "other"
    model = get_peft_model(
        build_model(32), LoraConfig(r=2, target_modules=["q_proj", "k_proj"], init_lora_weights=False)
    )
    model.save_pretrained(other)
    code, stdout, err = cli("diff", trained_adapter, other)
    assert code == 0, err
    assert "only in A (2): model.layers.0.self_attn.v_proj, model.layers.1.self_attn.v_proj" in stdout
    assert "only in B (2): model.layers.0.self_attn.k_proj" in stdout and "8/2" in stdout
    code, _, err = cli("diff", trained_adapter, tmp_path / "nothing")
    assert code == 2 and "does not exist" in err


def test_diff_numbers_equal_the_dense_computation(tmp_path, cli):
    deltas = []
    for seed, folder in ((0, tmp_path / "a"), (1, tmp_path / "b")):
        torch.manual_seed(seed)
        model = get_peft_model(
            build_model(32), LoraConfig(r=3, lora_alpha=5, target_modules=["q_proj"], init_lora_weights=False)
        )
        model.save_pretrained(folder)
        layer = model.base_model.model.model.layers[0].self_attn.q_proj
        b, a = layer.lora_B["default"].weight.double(), layer.lora_A["default"].weight.double()
        deltas.append((b @ a * layer.scaling["default"]).detach())  # the dense delta, in float64
    code, stdout, _ = cli("diff", tmp_path / "a", tmp_path / "b", "--json")
    assert code == 0
    first = json.loads(stdout)["modules"][0]
    a, b = deltas
    assert abs(first["norm_a"] - a.norm().item()) < 1e-9
    assert abs(first["norm_diff"] - (a - b).norm().item()) < 1e-9
    assert abs(first["cosine"] - (a * b).sum().item() / (a.norm() * b.norm()).item()) < 1e-9


def test_generate_points_gguf_adapters_at_import(tmp_path, trained_adapter, tiny_model_dir, cli):
    out = tmp_path / "adapter.gguf"
    assert cli("export", trained_adapter, "-o", out)[0] == 0
    code, _, err = cli("generate", "--model", tiny_model_dir, "--adapter", out, "--prompt", "hi")
    assert code == 2 and f"peftkit import --from gguf {out} -o DIR" in err
