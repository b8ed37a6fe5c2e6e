"""Hub repo ids resolve through the local Hugging Face cache (no network in tests), and push_to_hub
uploads exactly what save_pretrained writes (HfApi intercepted)."""

from __future__ import annotations

import shutil
from pathlib import Path

import peft
import pytest
import torch
from huggingface_hub import HfApi
from tests.conftest import llama_inputs, tiny_llama
from tests.persistence.helpers import ATOL, fresh, max_diff, save_both

import peftkit
from peftkit.helpers import check_if_peft_model

SHA = "0123456789abcdef0123456789abcdef01234567"


def _logits(model):
    with torch.no_grad():
        return model(**llama_inputs()).logits


def put_in_cache(cache: Path, repo_id: str, folder: Path, sha: str = SHA, subfolder: str = "") -> Path:
    """Lay `folder` out as huggingface_hub's cache does: models--org--name/snapshots/<sha>/..., refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / sha / subfolder
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    return snapshot


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read by peftkit at call time


@pytest.fixture
def cached_adapter(tmp_path):
    base, theirs, _, peft_dir, _ = save_both(
        tmp_path, tiny_llama, {"target_modules": ["q_proj", "v_proj"]}, "CAUSAL_LM"
    )
    cache = tmp_path / "hub_cache"
    put_in_cache(cache, "someone/tiny-lora", peft_dir)
    return base, theirs, cache


def test_from_pretrained_with_repo_id_from_cache_offline(cached_adapter, offline):
    base, theirs, cache = cached_adapter
    loaded = peftkit.PeftModel.from_pretrained(fresh(base), "someone/tiny-lora", cache_dir=str(cache))
    assert type(loaded).__name__ == "PeftModelForCausalLM"
    assert max_diff(_logits(loaded), _logits(theirs)) <= ATOL


def test_revision_by_commit_sha_and_config_from_cache(cached_adapter, offline):
    base, theirs, cache = cached_adapter
    config = peftkit.PeftConfig.from_pretrained("someone/tiny-lora", cache_dir=str(cache), revision=SHA)
    assert config.target_modules == {"q_proj", "v_proj"}
    loaded = peftkit.PeftModel.from_pretrained(
        fresh(base), "someone/tiny-lora", cache_dir=str(cache), revision=SHA
    )
    assert max_diff(_logits(loaded), _logits(theirs)) <= ATOL


def test_subfolder_in_cached_repo(tmp_path, offline):
    base, theirs, _, peft_dir, _ = save_both(
        tmp_path, tiny_llama, {"target_modules": ["q_proj"]}, "CAUSAL_LM"
    )
    cache = tmp_path / "hub_cache"
    put_in_cache(cache, "someone/many-loras", peft_dir, subfolder="task_a")
    loaded = peftkit.PeftModel.from_pretrained(
        fresh(base), "someone/many-loras", subfolder="task_a", cache_dir=str(cache)
    )
    assert max_diff(_logits(loaded), _logits(theirs)) <= ATOL


def test_cached_bin_only_repo_loads_offline(tmp_path, offline):
    base, theirs, _, peft_dir, _ = save_both(
        tmp_path, tiny_llama, {"target_modules": ["q_proj"]}, "CAUSAL_LM", safe_serialization=False
    )
    cache = tmp_path / "hub_cache"
    put_in_cache(cache, "someone/old-lora", peft_dir)
    loaded = peftkit.PeftModel.from_pretrained(fresh(base), "someone/old-lora", cache_dir=str(cache))
    assert max_diff(_logits(loaded), _logits(theirs)) <= ATOL


def test_repo_not_in_cache_offline_is_a_clear_error(tmp_path, offline):
    with pytest.raises(ValueError, match=r"adapter_config\.json.*HF_HUB_OFFLINE.*not in the Hub cache"):
        peftkit.PeftModel.from_pretrained(tiny_llama(), "someone/never-downloaded", cache_dir=str(tmp_path))


def test_weights_missing_from_cache_offline_is_a_clear_error(cached_adapter, offline):
    base, _, cache = cached_adapter
    snapshot = cache / "models--someone--tiny-lora" / "snapshots" / SHA
    (snapshot / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors.*not in the Hub cache"):
        peftkit.PeftModel.from_pretrained(fresh(base), "someone/tiny-lora", cache_dir=str(cache))


def test_check_if_peft_model(cached_adapter, offline, tmp_path):
    _, _, cache = cached_adapter
    assert check_if_peft_model(str(cache / "models--someone--tiny-lora" / "snapshots" / SHA))
    assert not check_if_peft_model(str(tmp_path / "nowhere"))
    assert not check_if_peft_model(str(tmp_path))  # a folder without adapter_config.json
    assert not check_if_peft_model("someone/never-downloaded")


def test_load_peft_weights_from_repo_id(cached_adapter, offline):
    _, theirs, cache = cached_adapter
    weights = peftkit.load_peft_weights("someone/tiny-lora", cache_dir=str(cache))
    assert sorted(weights) == sorted(peft.get_peft_model_state_dict(theirs))


class _FakeHub:
    """Records create_repo/upload_folder calls and keeps a copy of the uploaded folder."""

    def __init__(self, keep: Path) -> None:
        self.keep = keep
        self.created: list[tuple] = []
        self.uploads: list[dict] = []

    def create_repo(self, api, repo_id, **kwargs):
        self.created.append((repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, api, *, repo_id, folder_path, **kwargs):
        shutil.copytree(folder_path, self.keep)
        self.uploads.append({"repo_id": repo_id, **kwargs})
        return f"https://huggingface.co/{repo_id}/commit/abc"


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    hub = _FakeHub(tmp_path / "uploaded")
    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: hub.create_repo(api, repo_id, **kw))
    monkeypatch.setattr(HfApi, "upload_folder", lambda api, **kw: hub.upload_folder(api, **kw))
    return hub


def test_push_to_hub_uploads_the_saved_folder(tmp_path, fake_hub):
    base, theirs, ours, _, _ = save_both(tmp_path, tiny_llama, {"target_modules": ["q_proj"]}, "CAUSAL_LM")
    ours.add_adapter("other", peftkit.LoraConfig(target_modules=["v_proj"], task_type="CAUSAL_LM"))
    url = ours.push_to_hub("me/my-lora", private=True, commit_message="first", token="hf_x", tags=["my-tag"])
    assert url.endswith("/commit/abc")
    assert fake_hub.created == [("me/my-lora", {"private": True, "exist_ok": True, "token": "hf_x"})]
    upload = fake_hub.uploads[0]
    assert upload["repo_id"] == "me/my-lora" and upload["commit_message"] == "first"
    uploaded = sorted(str(p.relative_to(fake_hub.keep)) for p in fake_hub.keep.rglob("*") if p.is_file())
    assert uploaded == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "other/adapter_config.json",
        "other/adapter_model.safetensors",
    ]
    assert "my-tag" in (fake_hub.keep / "README.md").read_text()
    # what was uploaded is a valid adapter for peft too
    assert (
        max_diff(_logits(peft.PeftModel.from_pretrained(fresh(base), str(fake_hub.keep))), _logits(theirs))
        <= ATOL
    )


def test_push_to_hub_forwards_save_options(tmp_path, fake_hub):
    _, _, ours, _, _ = save_both(tmp_path, tiny_llama, {"target_modules": ["q_proj"]}, "CAUSAL_LM")
    ours.push_to_hub("me/my-lora", safe_serialization=False, revision="dev", create_pr=True)
    assert (fake_hub.keep / "adapter_model.bin").exists()
    assert fake_hub.uploads[0]["revision"] == "dev" and fake_hub.uploads[0]["create_pr"] is True
