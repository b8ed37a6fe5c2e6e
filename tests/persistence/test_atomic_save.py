"""A save that fails part-way leaves the folder as the previous complete save, sub-folders included.

The failure is injected at each step of a save over an existing adapter: while the weights are written
(an OSError and a Ctrl-C), while the config is written, in the second adapter's sub-folder, and at the
exchange that makes the new tree the folder. Each time the folder still loads the OLD adapters, in
peftkit and in peft, with their exact outputs, and nothing temporary is left. Where the exchange is not
available, the per-file order still never loads a mix. (tests/reliability kills real processes.)
"""

from __future__ import annotations

import copy
import os

import peft
import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_llama
from tests.persistence.helpers import fresh

import peftkit
from peftkit.utils import atomic_io, folder_swap, weights_io


def _logits(model):
    with torch.no_grad():
        return model(**llama_inputs()).logits


def _two_adapters(base, seed):
    model = peftkit.get_peft_model(
        copy.deepcopy(base), peftkit.LoraConfig(target_modules=["q_proj", "v_proj"])
    )
    model.add_adapter("other", peftkit.LoraConfig(target_modules=["v_proj"]))
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    perturb_adapter_weights(model, seed=seed)  # same shapes and configs, other weights: a mix would load
    return model.eval()


@pytest.fixture
def old_and_new(tmp_path):
    """Two adapters ("default" and "other") saved in `folder` (old), and different ones to save over them."""
    base = tiny_llama()
    old, new = _two_adapters(base, seed=1), _two_adapters(base, seed=2)
    folder = tmp_path / "adapter"
    old.save_pretrained(folder)
    return base, old, new, folder


def _outputs(model, adapter):
    model.set_adapter(adapter)
    return _logits(model)


def _assert_loads_as(base, reference, folder):
    """Both adapters of `folder` give `reference`'s outputs, in peftkit and in peft."""
    for adapter, subfolder in (("default", None), ("other", "other")):
        expected = _outputs(reference, adapter)
        extra = {"subfolder": subfolder} if subfolder else {}
        ours = peftkit.PeftModel.from_pretrained(fresh(base), folder, **extra)
        theirs = peft.PeftModel.from_pretrained(fresh(base), str(folder), **extra)
        assert torch.allclose(_logits(ours), expected, atol=1e-6)
        assert torch.allclose(_logits(theirs), expected, atol=1e-6)


def _leftovers(folder) -> list[str]:
    """Temporary files in the folder tree and staging folders beside it."""
    found = [p.name for p in folder.rglob("*") if atomic_io.is_stale_temp_name(p.name)]
    return found + [p.name for p in folder.parent.iterdir() if folder_swap._STAGING_MARK in p.name]


def _half_writer(real):
    def write(tensors, path, metadata):
        real(tensors, path, metadata)
        with open(path, "r+b") as f:
            f.truncate(f.seek(0, 2) // 2)  # the process dies with half the file on disk
        raise OSError(28, "No space left on device")

    return write


def test_crash_while_writing_weights_keeps_old_adapters(old_and_new, monkeypatch):
    base, old, new, folder = old_and_new
    monkeypatch.setattr(weights_io, "_save_safetensors", _half_writer(weights_io._save_safetensors))
    with pytest.raises(OSError, match="No space left"):
        new.save_pretrained(folder)
    monkeypatch.undo()
    _assert_loads_as(base, old, folder)
    assert _leftovers(folder) == []


def test_ctrl_c_while_writing_weights_keeps_old_adapters(old_and_new, monkeypatch):
    base, old, new, folder = old_and_new

    def interrupted(tensors, path, metadata):
        with open(path, "wb") as f:
            f.write(b"\x10\x00\x00\x00")  # a few bytes, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(weights_io, "_save_safetensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        new.save_pretrained(folder)
    monkeypatch.undo()
    _assert_loads_as(base, old, folder)
    assert _leftovers(folder) == []


def test_crash_in_second_adapter_keeps_both_old_adapters(old_and_new, monkeypatch):
    base, old, new, folder = old_and_new
    calls = []
    real = weights_io._save_safetensors

    def crash_on_second(tensors, path, metadata):
        calls.append(path)
        (_half_writer(real) if len(calls) == 2 else real)(tensors, path, metadata)

    monkeypatch.setattr(weights_io, "_save_safetensors", crash_on_second)
    with pytest.raises(OSError):
        new.save_pretrained(folder)
    monkeypatch.undo()
    _assert_loads_as(base, old, folder)  # the first adapter's new files were never visible either


def test_crash_while_writing_config_keeps_old_adapters(old_and_new, monkeypatch):
    base, old, new, folder = old_and_new

    def crash(self, save_directory, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(peftkit.LoraConfig, "save_pretrained", crash)
    with pytest.raises(OSError):
        new.save_pretrained(folder)
    monkeypatch.undo()
    _assert_loads_as(base, old, folder)


def test_failed_exchange_keeps_old_adapters(old_and_new, monkeypatch):
    base, old, new, folder = old_and_new

    def failing_exchange(a, b):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(folder_swap, "exchange_paths", failing_exchange)
    with pytest.raises(OSError, match="Input/output"):
        new.save_pretrained(folder)
    monkeypatch.undo()
    _assert_loads_as(base, old, folder)
    assert _leftovers(folder) == []


def test_killed_after_the_exchange_loads_new_and_next_save_cleans_up(old_and_new, monkeypatch):
    base, _old, new, folder = old_and_new
    monkeypatch.setattr(folder_swap, "_remove_tree", lambda path: None)  # dies before deleting the old tree
    new.save_pretrained(folder)
    monkeypatch.undo()
    assert _leftovers(folder)  # the old tree is still beside the folder, under the staging name
    (folder / ".adapter_config.json.0123456789abcdef.tmp").write_text("{")  # and a killed per-file save's
    _assert_loads_as(base, new, folder)  # loads ignore both
    new.save_pretrained(folder)
    assert _leftovers(folder) == []
    _assert_loads_as(base, new, folder)


def test_successful_save_over_old_adapters_loads_new(old_and_new):
    base, old, new, folder = old_and_new
    inode = folder.stat().st_ino
    new.save_pretrained(folder)
    assert folder.stat().st_ino != inode  # the folder was replaced as a whole
    _assert_loads_as(base, new, folder)
    assert _leftovers(folder) == []
    assert not torch.allclose(_outputs(old, "other"), _outputs(new, "other"), atol=1e-3)  # distinguishable


# ----- where the folder cannot be exchanged: written in place, file by file -----
@pytest.fixture
def no_exchange(monkeypatch):
    monkeypatch.setattr(folder_swap, "_EXCHANGE", None)  # as on Windows


def test_filesystem_refusing_the_exchange_falls_back_to_in_place(old_and_new, monkeypatch):
    base, _old, new, folder = old_and_new
    monkeypatch.setattr(folder_swap, "exchange_paths", lambda a, b: False)  # e.g. EINVAL from the filesystem
    new.save_pretrained(folder)
    monkeypatch.undo()
    _assert_loads_as(base, new, folder)
    assert _leftovers(folder) == []


def _assert_refuses(base, folder):
    with pytest.raises(ValueError, match=r"adapter_config\.json"):
        peftkit.PeftModel.from_pretrained(fresh(base), folder)
    with pytest.raises(ValueError, match=r"adapter_config\.json"):
        peft.PeftModel.from_pretrained(fresh(base), str(folder))


def test_in_place_save_works_and_keeps_the_folder(old_and_new, no_exchange):
    base, _old, new, folder = old_and_new
    inode = folder.stat().st_ino
    new.save_pretrained(folder)
    assert folder.stat().st_ino == inode
    _assert_loads_as(base, new, folder)
    assert _leftovers(folder) == []


def test_in_place_crash_at_the_rename_refuses_to_load(old_and_new, no_exchange, monkeypatch):
    base, _old, new, folder = old_and_new

    def failing_replace(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic_io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="Input/output"):
        new.save_pretrained(folder)
    monkeypatch.undo()
    _assert_refuses(base, folder)  # old weights, but no config: never a mix


def test_in_place_crash_before_config_refuses_to_load(old_and_new, no_exchange, monkeypatch):
    base, _old, new, folder = old_and_new

    def crash(self, save_directory, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(peftkit.LoraConfig, "save_pretrained", crash)
    with pytest.raises(OSError):
        new.save_pretrained(folder)
    monkeypatch.undo()
    _assert_refuses(base, folder)  # new weights, old config gone: never old config + new weights


def test_save_into_the_current_directory_is_written_in_place(old_and_new, monkeypatch):
    base, _old, new, folder = old_and_new
    inode = folder.stat().st_ino
    monkeypatch.chdir(folder)  # swapping it would leave the process in a deleted folder
    new.save_pretrained(".")
    assert folder.stat().st_ino == inode
    assert os.getcwd() == str(folder)
    _assert_loads_as(base, new, folder)
