"""Framework layer hooks exercised on toy layers (no method's own math involved)."""

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.tuners.tuners_utils import BaseTunerLayer


class WeightPlusBranch(BaseTunerLayer, nn.Module):
    """Adapts the weight (W + D) and, optionally, adds a bias-like branch beside it (v)."""

    adapter_layer_names = ("toy_delta", "toy_branch")
    adapts_weight_in_forward = True

    def __init__(self, base: nn.Linear, with_branch: bool) -> None:
        nn.Module.__init__(self)
        self._init_tuner_layer(base)
        gen = torch.Generator().manual_seed(0)
        self.toy_delta = nn.ParameterDict({"a": nn.Parameter(torch.randn(base.weight.shape, generator=gen))})
        self.toy_branch = nn.ParameterDict({"a": nn.Parameter(torch.randn(base.out_features, generator=gen))})
        self.with_branch = with_branch
        self._active_adapter = "a"

    def _merged_weight(self, adapter_name, weight):
        return weight + self.toy_delta[adapter_name]

    def _output_beside_weight(self, adapter_name, x, result):
        return result + self.toy_branch[adapter_name] if self.with_branch else result


def test_output_beside_weight_is_added_after_the_adapted_weight_forward():
    torch.manual_seed(0)
    base = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    for with_branch in (False, True):
        layer = WeightPlusBranch(base, with_branch)
        with torch.no_grad():
            expected = F.linear(x, base.weight + layer.toy_delta["a"], base.bias)
            if with_branch:
                expected = expected + layer.toy_branch["a"]
            # exact (atol 0): the same operations in the same order
            torch.testing.assert_close(layer(x), expected, atol=0, rtol=0)
            # a mixed batch runs one pass per group, through the same hook
            mixed = layer(x, adapter_names=["a", "__base__", "a", "__base__", "a"])
            rows = torch.tensor([0, 2, 4])
            torch.testing.assert_close(mixed[rows], expected[rows], atol=0, rtol=0)
            torch.testing.assert_close(mixed[1], base(x)[1], atol=0, rtol=0)
