"""Framework hooks tested on their own (the methods that need them test them in use too):
`_output_without_base` (a layer computes the adapted output without running the base layer) and
`_may_be_empty` (a tuner's saved tensor that is empty by design)."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import tiny_llama
from torch import nn

from peftkit import LoraConfig, get_peft_model
from peftkit.tuners.lora import LoraModel
from peftkit.tuners.tuners_utils import BaseTunerLayer


class _CountingLinear(nn.Linear):
    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        return super().forward(x)


class _ReplacingLayer(BaseTunerLayer, nn.Module):
    """y = 2 * base(x) for adapter "twice"; computed without the base layer when `shortcut` is set."""

    adapter_layer_names = ("scale",)

    def __init__(self, base_layer: nn.Module, shortcut: bool) -> None:
        nn.Module.__init__(self)
        self._init_tuner_layer(base_layer)
        self.scale = nn.ParameterDict({"twice": nn.Parameter(torch.ones(()))})
        self.shortcut = shortcut
        self._active_adapter = "twice"

    def _adapter_output(self, adapter_name, x, base_result):
        return base_result * self.scale[adapter_name]

    def _output_without_base(self, active, x):
        if not self.shortcut:
            return None
        weight, bias = self.base_layer.weight, self.base_layer.bias
        return (1 + self.scale[active[0]]) * (x @ weight.T + bias)


def test_output_without_base_replaces_the_base_pass_and_none_falls_back():
    torch.manual_seed(0)
    base = _CountingLinear(4, 3)
    x = torch.randn(2, 4)
    expected = 2 * base(x)
    for shortcut, base_calls in ((True, 0), (False, 1)):
        layer = _ReplacingLayer(base, shortcut)
        _CountingLinear.calls = 0
        torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=0)
        assert _CountingLinear.calls == base_calls, shortcut
    with torch.no_grad():  # disabled adapters: the base layer alone, never the shortcut
        layer = _ReplacingLayer(base, shortcut=True)
        layer.enable_adapters(False)
        torch.testing.assert_close(layer(x), base(x), atol=0, rtol=0)


def test_may_be_empty_lets_a_designed_empty_tensor_be_saved_and_nothing_else(tmp_path, monkeypatch):
    model = get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj"]))
    for layer in (model.base_model.model.model.layers[i].self_attn.q_proj for i in (0, 1)):
        layer.lora_A["default"].weight = nn.Parameter(torch.empty(0))
    allowed = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    monkeypatch.setattr(LoraModel, "_may_be_empty", lambda self, key, adapter: key == allowed)
    with pytest.raises(ValueError, match=r"layers\.1\.self_attn\.q_proj\.lora_A.*zero-size"):
        model.save_pretrained(tmp_path)
    model.base_model.model.model.layers[1].self_attn.q_proj.lora_A["default"].weight = nn.Parameter(
        torch.ones(8, 32)
    )
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    assert load_file(tmp_path / "adapter_model.safetensors")[allowed].shape == (0,)
