"""What a save does to the folder around the adapter: the user's own files survive the swap (linked, not
copied), file modes follow the umask, the folder keeps its permissions, concurrent writers take turns,
and files another program adds while the save runs are not lost."""

from __future__ import annotations

import os
import stat
import threading

import pytest
import torch
from torch import nn

import peftkit
from peftkit.utils import folder_lock, folder_swap
from peftkit.utils.warnings import FolderLockedError


def _model(seed: int = 0) -> peftkit.PeftModel:
    torch.manual_seed(seed)
    base = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    model = peftkit.get_peft_model(base, peftkit.LoraConfig(r=2, target_modules=["0", "2"]))
    model.add_adapter("other", peftkit.LoraConfig(r=2, target_modules=["2"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_()
    return model


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test (restored after)."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_files_and_folders_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    folder = tmp_path / "adapter"
    _model().save_pretrained(folder)  # the first save
    _model(1).save_pretrained(folder)  # and a save over it
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "other/adapter_config.json",
    ):
        assert _mode(folder / name) == 0o666 & ~mask, name
    assert _mode(folder) == 0o777 & ~mask
    assert _mode(folder / "other") == 0o777 & ~mask


def test_folder_keeps_its_permissions_and_the_users_files(tmp_path):
    folder = tmp_path / "adapter"
    _model().save_pretrained(folder)
    (folder / "notes.txt").write_text("mine")
    (folder / "runs" / "1").mkdir(parents=True)
    (folder / "runs" / "1" / "log.jsonl").write_text("{}\n")
    (folder / "other" / "extra.bin").write_bytes(b"\x00" * 10)
    (folder / "link").symlink_to("notes.txt")
    (folder / "README.md").write_text("my own card")
    os.chmod(folder / "runs", 0o750)
    os.chmod(folder, 0o750)
    inode = (folder / "runs" / "1" / "log.jsonl").stat().st_ino
    _model(1).save_pretrained(folder)
    assert (folder / "notes.txt").read_text() == "mine"
    assert (folder / "runs" / "1" / "log.jsonl").stat().st_ino == inode  # linked, not copied
    assert (folder / "other" / "extra.bin").read_bytes() == b"\x00" * 10
    assert os.readlink(folder / "link") == "notes.txt"
    assert (folder / "README.md").read_text() == "my own card"  # an existing card is never rewritten
    assert _mode(folder) == 0o750 and _mode(folder / "runs") == 0o750


def test_saving_some_adapters_keeps_the_others(tmp_path):
    folder = tmp_path / "adapter"
    first = _model()
    first.save_pretrained(folder)
    before = (folder / "other" / "adapter_model.safetensors").read_bytes()
    _model(1).save_pretrained(folder, selected_adapters=["default"])
    assert (folder / "other" / "adapter_model.safetensors").read_bytes() == before


def test_switching_format_leaves_no_stale_weights_file(tmp_path):
    folder = tmp_path / "adapter"
    _model().save_pretrained(folder)
    _model().save_pretrained(folder, safe_serialization=False)
    assert not (folder / "adapter_model.safetensors").exists()
    assert (folder / "adapter_model.bin").exists()


def test_files_added_while_the_save_runs_are_kept(tmp_path, monkeypatch):
    folder = tmp_path / "adapter"
    _model().save_pretrained(folder)
    (folder / "replaced.txt").write_text("old")
    real = folder_swap.exchange_paths

    def another_program_writes_then_exchange(a, b):
        # between linking the old folder's files and the exchange, another program writes into it
        (folder / "added.txt").write_text("new file")
        (folder / "new_dir").mkdir()
        (folder / "new_dir" / "x").write_text("x")
        (folder / "replaced.tmp-by-other").write_text("new version")
        os.replace(folder / "replaced.tmp-by-other", folder / "replaced.txt")
        return real(a, b)

    monkeypatch.setattr(folder_swap, "exchange_paths", another_program_writes_then_exchange)
    _model(1).save_pretrained(folder)
    assert (folder / "added.txt").read_text() == "new file"
    assert (folder / "new_dir" / "x").read_text() == "x"
    assert (folder / "replaced.txt").read_text() == "new version"


def test_too_many_entries_are_written_in_place(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    _model().save_pretrained(folder)
    for i in range(5):
        (folder / f"data{i}.txt").write_text(str(i))
    monkeypatch.setattr(folder_swap, "MAX_CARRIED_ENTRIES", 3)
    inode = folder.stat().st_ino
    _model(1).save_pretrained(folder)
    assert folder.stat().st_ino == inode  # not swapped: a folder with this much in it is written in place
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("data")) == [
        f"data{i}.txt" for i in range(5)
    ]
    loaded = peftkit.PeftModel.from_pretrained(
        nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)), folder
    )
    assert set(loaded.peft_config) == {"default"}


def test_a_second_writer_waits_and_a_stuck_one_is_a_clear_error(tmp_path, monkeypatch):
    folder = tmp_path / "adapter"
    _model().save_pretrained(folder)
    held, release = threading.Event(), threading.Event()

    def holder():
        with folder_lock.locked_folder(str(folder)):
            held.set()
            release.wait(timeout=30)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        held.wait(timeout=30)
        monkeypatch.setattr(folder_lock, "LOCK_TIMEOUT_S", 0.2)
        with pytest.raises(FolderLockedError, match="Another process has been saving into .*adapter"):
            _model(1).save_pretrained(folder)
        monkeypatch.setattr(folder_lock, "LOCK_TIMEOUT_S", 30.0)
        threading.Timer(0.2, release.set).start()
        _model(1).save_pretrained(folder)  # waits for the holder, then saves
    finally:
        release.set()
        thread.join()
    assert (folder / "adapter_config.json").exists()


def test_a_waiting_writer_follows_the_folder_it_waited_for(tmp_path):
    folder = tmp_path / "adapter"
    _model().save_pretrained(folder)
    with folder_lock.locked_folder(str(folder)) as locked:
        assert locked
        old_inode = folder.stat().st_ino
        result = {}

        def waiter():
            with folder_lock.locked_folder(str(folder)):
                result["inode"] = folder.stat().st_ino

        thread = threading.Thread(target=waiter)
        thread.start()
        # the holder swaps the folder while the other one waits on the old inode
        replacement = tmp_path / "replacement"
        replacement.mkdir()
        assert folder_swap.exchange_paths(str(folder), str(replacement))
    thread.join(timeout=30)
    assert result["inode"] == folder.stat().st_ino != old_inode
