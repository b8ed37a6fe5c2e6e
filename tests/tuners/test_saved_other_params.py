"""`saved_other_param_names`: per-adapter tensors a layer keeps in plain dicts (outside the state dict) that
adapter files hold all the same, as `<layer>.<name>`; the framework writes them and hands them back on load."""

import torch
from torch import nn

from peftkit.tuners._adapter_keys import saved_other_param_tensors, take_saved_other_param_tensors
from peftkit.tuners.tuners_utils import BaseTunerLayer


class IndexedLayer(BaseTunerLayer, nn.Module):
    adapter_layer_names = ("idx_weight",)
    other_param_names = ("idx_positions",)
    saved_other_param_names = ("idx_positions",)

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self._init_tuner_layer(nn.Linear(3, 3))
        self.idx_weight = nn.ParameterDict(
            {"a": nn.Parameter(torch.zeros(2)), "b": nn.Parameter(torch.zeros(2))}
        )
        self.idx_positions = {"a": torch.tensor([[0, 1], [2, 0]]), "b": torch.tensor([[1, 1], [0, 2]])}


def model_with_layer() -> nn.Module:
    model = nn.Sequential()
    model.add_module("block", nn.Sequential())
    model.block.add_module("proj", IndexedLayer())
    return model


def test_saved_tensors_are_keyed_by_layer_path_and_only_the_adapter_s_own():
    model = model_with_layer()
    saved = saved_other_param_tensors(model, "a")
    assert list(saved) == ["block.proj.idx_positions"]
    assert torch.equal(saved["block.proj.idx_positions"], torch.tensor([[0, 1], [2, 0]]))
    assert "idx_positions" not in str(list(model.state_dict()))  # they stay outside the state dict


def test_loading_hands_them_to_their_layer_and_leaves_the_rest():
    model = model_with_layer()
    new = torch.tensor([[2, 2], [1, 0]], dtype=torch.int32)
    other = torch.zeros(2)
    remaining = take_saved_other_param_tensors(
        model, "c", {"block.proj.idx_positions": new, "block.proj.idx_weight": other}
    )
    assert list(remaining) == ["block.proj.idx_weight"]
    layer = model.block.proj
    assert torch.equal(layer.idx_positions["c"], new)
    assert layer.idx_positions["c"].device == layer.base_layer.weight.device
    assert torch.equal(layer.idx_positions["a"], torch.tensor([[0, 1], [2, 0]]))  # other adapters untouched
