"""Every lifecycle operation with a merged adapter present (issue 20, the README's table "An adapter
merged into the base weights").

Each operation either refuses with an error naming the merged adapter and the fix, or leaves the model
exactly as if the merge had been undone first: the same operation on a twin on which
`unmerge_adapter()` was called first gives bit-identical tensors, the same merged state and the same
outputs. Operations that neither read nor change the base weights (saving, deleting another adapter)
keep the merge, and their result equals the twin's.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import peftkit
from peftkit.utils.hotswap import hotswap_adapter
from peftkit.utils.warnings import PeftWarning

X = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(10, 16)  # a name peft saves the base matrix of when targeted
        self.first = nn.Linear(16, 16)
        self.second = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)))


def _base() -> nn.Module:
    torch.manual_seed(0)
    return MLP()


def _randomize(model: nn.Module, adapter: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if f".{adapter}." in name or name.endswith(f".{adapter}"):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)


def _merged_model() -> peftkit.PeftModel:
    """Adapters "one" (active, merged) and "two" on `first` and `second`."""
    model = peftkit.get_peft_model(
        _base(), peftkit.LoraConfig(r=4, target_modules=["first", "second"]), "one"
    )
    model.add_adapter("two", peftkit.LoraConfig(r=4, target_modules=["first", "second"]))
    _randomize(model, "one", 1)
    _randomize(model, "two", 2)
    model.eval()
    model.merge_adapter()
    return model


def _merged(model) -> list[str]:
    return model.base_model.merged_adapter_names()


def _assert_identical(model, twin) -> None:
    if isinstance(model, peftkit.PeftModel):
        assert _merged(model) == _merged(twin)
    ours, theirs = model.state_dict(), twin.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    with torch.no_grad():
        assert torch.equal(model(X), twin(X))


@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory):
    """A LoRA adapter on the same layers, saved to a folder (for load_adapter and hotswap)."""
    folder = tmp_path_factory.mktemp("saved")
    model = peftkit.get_peft_model(_base(), peftkit.LoraConfig(r=4, target_modules=["first", "second"]))
    _randomize(model, "default", 3)
    model.save_pretrained(folder)
    return folder


# name -> (operation, whether it unmerges first); the operation may use the saved adapter's folder
UNMERGES_FIRST = {
    "set_adapter to another adapter": lambda m, f: m.set_adapter("two"),
    "set_adapter to the merged adapter": lambda m, f: m.set_adapter("one"),
    "add_adapter": lambda m, f: m.add_adapter("new", peftkit.LoraConfig(r=2, target_modules=["first"])),
    # DoRA's magnitudes are the norms of the base weight: made from merged weights they would be wrong
    "add_adapter (DoRA)": lambda m, f: m.add_adapter(
        "new", peftkit.LoraConfig(r=2, target_modules=["first"], use_dora=True)
    ),
    "load_adapter under a new name": lambda m, f: m.load_adapter(f, "new"),
    "load_adapter over the merged adapter": lambda m, f: m.load_adapter(f, "one"),
    "add_weighted_adapter": lambda m, f: m.add_weighted_adapter(
        ["one", "two"], [1.0, 0.5], "combined", "svd"
    ),
    "unload": lambda m, f: m.unload(),
}


@pytest.mark.parametrize("operation", sorted(UNMERGES_FIRST))
def test_operation_acts_as_if_unmerged_first_and_warns(operation, saved_adapter):
    model = _merged_model()
    twin = copy.deepcopy(model)
    with pytest.warns(
        PeftWarning, match=r"Adapter\(s\) \['one'\] are merged into the base weights; unmerging"
    ):
        torch.manual_seed(7)  # new adapters draw their initial values
        result = UNMERGES_FIRST[operation](model, saved_adapter)
    twin.unmerge_adapter()
    torch.manual_seed(7)
    twin_result = UNMERGES_FIRST[operation](twin, saved_adapter)
    if operation == "unload":  # the original base model, no adapter layer left
        _assert_identical(result, twin_result)
        original = _base()
        for key, value in original.state_dict().items():
            torch.testing.assert_close(result.state_dict()[key], value, atol=1e-6, rtol=0)
    else:
        assert _merged(model) == []
        _assert_identical(model, twin)


def test_disable_adapter_unmerges_on_entry_and_computes_the_base():
    model = _merged_model()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        base_output = _base()(X)
    with (
        pytest.warns(PeftWarning, match=r"\['one'\].*unmerging them before disabling"),
        model.disable_adapter(),
    ):
        assert _merged(model) == []
        with torch.no_grad():
            torch.testing.assert_close(model(X), base_output, atol=1e-6, rtol=0)
    twin.unmerge_adapter()
    with twin.disable_adapter():
        pass
    _assert_identical(model, twin)  # after the block: unmerged, adapters enabled, "one" active


def test_delete_merged_adapter_is_refused_naming_it():
    model = _merged_model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"\['one'\].*merged.*unmerge_adapter\(\)"):
        model.delete_adapter("one")
    assert _merged(model) == ["one"]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_delete_another_adapter_keeps_the_merge():
    model = _merged_model()
    twin = copy.deepcopy(model)
    model.delete_adapter("two")
    assert _merged(model) == ["one"]
    twin.unmerge_adapter()
    twin.delete_adapter("two")
    twin.merge_adapter()
    _assert_identical(model, twin)


def test_hotswap_of_the_merged_adapter_is_refused_naming_it(saved_adapter):
    model = _merged_model()
    with pytest.raises(RuntimeError, match=r"'one' is merged.*unmerge it"):
        hotswap_adapter(model, saved_adapter, "one")
    assert _merged(model) == ["one"]


def test_save_keeps_the_merge_and_writes_what_an_unmerged_model_writes(tmp_path):
    model = _merged_model()
    twin = copy.deepcopy(model)
    model.save_pretrained(tmp_path / "merged")
    assert _merged(model) == ["one"]
    twin.unmerge_adapter()
    twin.save_pretrained(tmp_path / "unmerged")
    for sub in ("one", "two"):
        ours = peftkit.utils.load_peft_weights(str(tmp_path / "merged" / sub))
        theirs = peftkit.utils.load_peft_weights(str(tmp_path / "unmerged" / sub))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
        config = (tmp_path / "merged" / sub / "adapter_config.json").read_text()
        assert config == (tmp_path / "unmerged" / sub / "adapter_config.json").read_text()


def test_save_refuses_base_weights_holding_a_merge(tmp_path):
    model = peftkit.get_peft_model(_base(), peftkit.LoraConfig(r=4, target_modules=["first", "embed_tokens"]))
    _randomize(model, "default", 1)
    model.merge_adapter()
    # with the embedding targeted, peft's format also stores the base embedding matrix: here a merged one
    with pytest.raises(ValueError, match=r"embed_tokens.*\['default'\].*merged.*unmerge_adapter\(\)"):
        model.save_pretrained(tmp_path)
    assert not (tmp_path / "adapter_config.json").exists()
    model.unmerge_adapter()
    model.save_pretrained(tmp_path)  # the fix the error names
    assert (tmp_path / "adapter_config.json").exists()


def test_a_second_get_peft_model_warns_naming_the_adapters():
    model = _merged_model()
    base = model.get_base_model()
    with pytest.warns(
        PeftWarning, match=r"for a second time: it already carries adapter\(s\) \['one', 'two'\]"
    ):
        peftkit.get_peft_model(base, peftkit.LoraConfig(r=2, target_modules=["first"]), "new")


def test_save_with_trained_biases_keeps_the_merge_unless_the_merge_changed_them(tmp_path):
    # bias="all": the base biases are saved with the adapter; a plain LoRA merge leaves them alone
    model = peftkit.get_peft_model(_base(), peftkit.LoraConfig(r=4, target_modules=["first"], bias="all"))
    _randomize(model, "default", 1)
    model.merge_adapter()
    model.save_pretrained(tmp_path / "plain")
    assert "base_model.model.first.base_layer.bias" in peftkit.utils.load_peft_weights(
        str(tmp_path / "plain")
    )
    # lora_bias merges into the base bias: saving it would write a merged value
    model = peftkit.get_peft_model(
        _base(), peftkit.LoraConfig(r=4, target_modules=["first"], bias="all", lora_bias=True)
    )
    _randomize(model, "default", 1)
    model.merge_adapter()
    with pytest.raises(ValueError, match=r"first\.base_layer\.bias.*\['default'\].*unmerge_adapter\(\)"):
        model.save_pretrained(tmp_path / "lora_bias")
