"""The store's fast path for plain LoRA adapters gives the same adapter as `load_adapter`, and steps
aside (changing nothing) for anything else."""

import copy

import pytest
import torch
from tests.conftest import llama_inputs

import peftkit
from peftkit.serving.fast_load import load_plain_lora, lora_layers_by_key

from .helpers import tiny_base

CONFIGS = {
    "plain": dict(r=4, lora_alpha=8, target_modules="all-linear"),
    "patterns": dict(
        r=4,
        lora_alpha=8,
        target_modules="all-linear",
        rank_pattern={"q_proj": 2},
        alpha_pattern={"v_proj": 3},
        use_rslora=True,
        lora_dropout=0.1,
    ),
    "dora": dict(r=4, target_modules="all-linear", use_dora=True),
    "fewer targets": dict(r=4, target_modules=["q_proj"]),
    "embedding": dict(r=4, target_modules=["q_proj", "embed_tokens"]),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast-load")
    base = tiny_base()
    for i, (name, kwargs) in enumerate(CONFIGS.items()):
        torch.manual_seed(i)
        config = peftkit.LoraConfig(init_lora_weights=False, **kwargs)
        peftkit.get_peft_model(copy.deepcopy(base), config).save_pretrained(root / name.replace(" ", "_"))
    return base, root


def _host(base, root):
    """A model with one all-linear LoRA adapter: every linear layer is a LoRA layer already."""
    return peftkit.PeftModel.from_pretrained(copy.deepcopy(base), root / "plain", adapter_name="host").eval()


@pytest.mark.parametrize("name", ["plain", "patterns", "fewer targets"])
@torch.no_grad()
def test_fast_load_equals_load_adapter(folders, name):
    base, root = folders
    folder = root / name.replace(" ", "_")
    fast, slow = _host(base, root), _host(base, root)
    config = peftkit.PeftConfig.from_pretrained(folder)
    assert load_plain_lora(fast, str(folder), "new", config, lora_layers_by_key(fast))
    slow.load_adapter(folder, adapter_name="new")
    assert fast.state_dict().keys() == slow.state_dict().keys()
    for key, value in slow.state_dict().items():
        assert torch.equal(fast.state_dict()[key], value), key
    for (_, mine), (_, theirs) in zip(fast.named_modules(), slow.named_modules()):
        if isinstance(theirs, peftkit.tuners.lora.LoraLayer) and "new" in theirs.r:
            assert (mine.r["new"], mine.lora_alpha["new"], mine.scaling["new"]) == (
                theirs.r["new"],
                theirs.lora_alpha["new"],
                theirs.scaling["new"],
            )
            assert not mine.lora_A["new"].weight.requires_grad and not mine.lora_dropout["new"].training
    assert fast.peft_config["new"].to_dict() == slow.peft_config["new"].to_dict()
    inputs = llama_inputs(batch=2, length=4)
    names = ["new", "host"]
    torch.testing.assert_close(
        fast(**inputs, adapter_names=names).logits, slow(**inputs, adapter_names=names).logits
    )
    fast.set_adapter("new")
    slow.set_adapter("new")
    torch.testing.assert_close(fast(**inputs).logits, slow(**inputs).logits)


@pytest.mark.parametrize("name", ["dora", "embedding"])
def test_other_adapters_take_the_general_path(folders, name):
    base, root = folders
    folder = root / name
    model = _host(base, root)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = peftkit.PeftConfig.from_pretrained(folder)
    assert not load_plain_lora(model, str(folder), "new", config, lora_layers_by_key(model))
    assert "new" not in model.peft_config and before.keys() == model.state_dict().keys()
