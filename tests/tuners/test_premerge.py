"""PremergeWeightMixin: a change computed from the base weight is always computed from the original one
while other adapters are merged, and unmerging the last adapter restores the weights bit for bit."""

import torch
from torch import nn

from peftkit.tuners._premerge import PremergeWeightMixin
from peftkit.tuners.tuners_utils import BaseTunerLayer


class ScaledCopy(PremergeWeightMixin, BaseTunerLayer, nn.Module):
    """A toy layer whose change is `s * W0` (so it depends on the original weight) and `s * b0`."""

    adapter_layer_names = ("scale",)

    def __init__(self, base: nn.Linear) -> None:
        nn.Module.__init__(self)
        self._init_tuner_layer(base)
        self.scale = nn.ParameterDict({})

    def add(self, name: str, value: float) -> None:
        self.scale[name] = nn.Parameter(torch.tensor(value))
        self._active_adapter = list(self.scale)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        return self.scale[adapter_name] * self._premerge_weight()

    def _bias_delta(self, adapter_name: str) -> torch.Tensor:
        return self.scale[adapter_name] * self._premerge_bias()

    def _adapter_output(self, adapter_name, x, base_result):
        return nn.functional.linear(x, self.get_delta_weight(adapter_name), self._bias_delta(adapter_name))


def test_every_merged_change_uses_the_original_weight_and_unmerge_restores_it():
    torch.manual_seed(0)
    base = nn.Linear(5, 3)
    original_weight, original_bias = base.weight.detach().clone(), base.bias.detach().clone()
    layer = ScaledCopy(base)
    layer.add("a", 0.5)
    layer.add("b", 0.25)
    x = torch.randn(4, 5)
    with torch.no_grad():
        unmerged = layer(x)
        layer.merge()
        # W0 + 0.5 W0 + 0.25 W0, not (1.5 W0) * 1.25
        torch.testing.assert_close(base.weight, original_weight * 1.75, rtol=0, atol=1e-6)
        torch.testing.assert_close(base.bias, original_bias * 1.75, rtol=0, atol=1e-6)
        torch.testing.assert_close(layer(x), unmerged, rtol=0, atol=1e-6)
        layer.unmerge()
    assert torch.equal(base.weight, original_weight) and torch.equal(base.bias, original_bias)
    assert layer._premerge_snapshot is None  # nothing is held once nothing is merged
