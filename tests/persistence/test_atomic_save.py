"""A save that crashes part-way never leaves a folder that loads as a valid but wrong adapter.

The crash is simulated at each step of a save over an existing adapter: while the weights are being
written (an OSError and a Ctrl-C), when the weights file is renamed into place, and after that but before
the config is written. Each time the folder either still loads the OLD adapter with its exact outputs,
or refuses to load with an error naming adapter_config.json.
"""

from __future__ import annotations

import copy

import peft
import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_llama
from tests.persistence.helpers import fresh

import peftkit
from peftkit.utils import atomic_io, weights_io


def _logits(model):
    with torch.no_grad():
        return model(**llama_inputs()).logits


@pytest.fixture
def old_and_new(tmp_path):
    """An adapter saved in `folder` (old) and a different one about to be saved over it (new)."""
    base = tiny_llama()
    old = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(target_modules=["q_proj", "v_proj"]))
    perturb_adapter_weights(old, seed=1)
    # same shapes and config, other weights: a mix of old and new would load without any error
    new = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(target_modules=["q_proj", "v_proj"]))
    perturb_adapter_weights(new, seed=2)
    folder = tmp_path / "adapter"
    old.save_pretrained(folder)
    return base, old.eval(), new.eval(), folder


def _half_writer(real):
    def write(tensors, path, metadata):
        real(tensors, path, metadata)
        with open(path, "r+b") as f:
            f.truncate(f.seek(0, 2) // 2)  # the process dies with half the file on disk
        raise OSError(28, "No space left on device")

    return write


def _assert_old_adapter_loads(base, old, folder):
    reference = _logits(old)
    assert torch.allclose(
        _logits(peftkit.PeftModel.from_pretrained(fresh(base), folder)), reference, atol=1e-6
    )
    assert torch.allclose(
        _logits(peft.PeftModel.from_pretrained(fresh(base), str(folder))), reference, atol=1e-6
    )


def _assert_refuses(base, folder):
    with pytest.raises(ValueError, match=r"adapter_config\.json"):
        peftkit.PeftModel.from_pretrained(fresh(base), folder)


def _no_temp_files(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_crash_while_writing_weights_keeps_old_adapter(old_and_new, monkeypatch):
    base, old, new, folder = old_and_new
    monkeypatch.setattr(weights_io, "_save_safetensors", _half_writer(weights_io._save_safetensors))
    with pytest.raises(OSError, match="No space left"):
        new.save_pretrained(folder)
    _assert_old_adapter_loads(base, old, folder)
    assert _no_temp_files(folder)


def test_ctrl_c_while_writing_weights_keeps_old_adapter(old_and_new, monkeypatch):
    base, old, new, folder = old_and_new

    def interrupted(tensors, path, metadata):
        with open(path, "wb") as f:
            f.write(b"\x10\x00\x00\x00")  # a few bytes, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(weights_io, "_save_safetensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        new.save_pretrained(folder)
    _assert_old_adapter_loads(base, old, folder)
    assert _no_temp_files(folder)


def test_crash_at_the_rename_refuses_to_load(old_and_new, monkeypatch):
    base, _old, new, folder = old_and_new

    def failing_replace(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic_io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="Input/output"):
        new.save_pretrained(folder)
    monkeypatch.undo()
    _assert_refuses(base, folder)  # old weights, but no config: never a mix
    assert _no_temp_files(folder)


def test_crash_before_config_is_written_refuses_to_load(old_and_new, monkeypatch):
    base, _old, new, folder = old_and_new

    def crash(self, save_directory, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(peftkit.LoraConfig, "save_pretrained", crash)
    with pytest.raises(OSError):
        new.save_pretrained(folder)
    monkeypatch.undo()
    _assert_refuses(base, folder)  # new weights, old config gone: never old config + new weights
    with pytest.raises(ValueError, match=r"adapter_config\.json"):
        peft.PeftModel.from_pretrained(fresh(base), str(folder))


def test_crash_in_second_adapter_keeps_its_old_version(tmp_path, monkeypatch):
    base = tiny_llama()
    model = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(target_modules=["q_proj"]))
    model.add_adapter("other", peftkit.LoraConfig(target_modules=["v_proj"]))
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    perturb_adapter_weights(model, seed=1)
    folder = tmp_path / "adapters"
    model.save_pretrained(folder)
    model.set_adapter("other")
    old_other = _logits(model.eval())
    perturb_adapter_weights(model, seed=5)  # "other" changes; the save of it will crash
    calls = []
    real = weights_io._save_safetensors

    def crash_on_second(tensors, path, metadata):
        calls.append(path)
        if len(calls) == 2:
            _half_writer(real)(tensors, path, metadata)
        real(tensors, path, metadata)

    monkeypatch.setattr(weights_io, "_save_safetensors", crash_on_second)
    with pytest.raises(OSError):
        model.save_pretrained(folder)
    reloaded = peftkit.PeftModel.from_pretrained(fresh(base), folder, subfolder="other")
    assert torch.allclose(_logits(reloaded), old_other, atol=1e-6)


def test_successful_save_over_old_adapter_loads_new(old_and_new):
    base, old, new, folder = old_and_new
    new.save_pretrained(folder)
    _assert_old_adapter_loads(base, new, folder)
    assert _no_temp_files(folder)
    assert not torch.allclose(_logits(old), _logits(new), atol=1e-3)  # the test can tell them apart
