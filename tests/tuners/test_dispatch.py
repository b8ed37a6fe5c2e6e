"""The declarative layer dispatch: which layer class a method's `layer_classes` picks, the Linear/Conv1D
rules the framework applies, and the one error for a layer a method cannot adapt."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import peftkit
from peftkit import LoraConfig, get_peft_model
from peftkit.tuners._dispatch import CONV1D, create_layer, supported_types
from peftkit.tuners._linear_kind import UnsupportedLayerError
from peftkit.tuners.lora import LoraModel
from peftkit.tuners.lora.layer import Conv2d as LoraConv2d
from peftkit.tuners.lora.layer import Linear as LoraLinear
from peftkit.tuners.tuners_utils import BaseTuner
from peftkit.utils.warnings import PeftWarning

TORCH_LINEAR, HF_CONV1D = "`torch.nn.Linear`", "`transformers.pytorch_utils.Conv1D`"

# method -> (config targeting "lin" and "norm", its tuner class, the supported types its error lists)
UNSUPPORTED_CASES = {
    "lora": (
        LoraConfig(target_modules=["lin", "norm"]),
        "LoraModel",
        f"{TORCH_LINEAR}, {HF_CONV1D}, `torch.nn.Embedding`, `torch.nn.Conv1d`, `torch.nn.Conv2d`, "
        "`torch.nn.Conv3d` and `torch.nn.MultiheadAttention`",
    ),
    "adalora": (
        peftkit.AdaLoraConfig(target_modules=["lin", "norm"], total_step=10, init_r=2),
        "AdaLoraModel",
        f"{TORCH_LINEAR}, {HF_CONV1D} and `torch.nn.Conv2d`",
    ),
    "ia3": (
        peftkit.IA3Config(target_modules=["lin", "norm"], feedforward_modules=[]),
        "IA3Model",
        f"{TORCH_LINEAR}, {HF_CONV1D}, `torch.nn.Conv2d` and `torch.nn.Conv3d`",
    ),
    "hra": (
        peftkit.HRAConfig(target_modules=["lin", "norm"], r=2),
        "HRAModel",
        f"{TORCH_LINEAR} and `torch.nn.Conv2d`",
    ),
    "oft": (
        peftkit.OFTConfig(target_modules=["lin", "norm"], r=2, oft_block_size=0),
        "OFTModel",
        f"{TORCH_LINEAR}, `torch.nn.Conv2d` and `torch.nn.Embedding`",
    ),
    "boft": (
        peftkit.BOFTConfig(target_modules=["lin", "norm"], boft_block_size=2),
        "BOFTModel",
        f"{TORCH_LINEAR} and `torch.nn.Conv2d`",
    ),
    "vera": (
        peftkit.VeraConfig(target_modules=["lin", "norm"], r=2),
        "VeraModel",
        f"{TORCH_LINEAR} and {HF_CONV1D}",
    ),
    "fourierft": (
        peftkit.FourierFTConfig(target_modules=["lin", "norm"], n_frequency=8),
        "FourierFTModel",
        f"{TORCH_LINEAR} and {HF_CONV1D}",
    ),
    "loha": (
        peftkit.LoHaConfig(target_modules=["lin", "norm"], r=2),
        "LoHaModel",
        f"{TORCH_LINEAR}, `torch.nn.Conv1d` and `torch.nn.Conv2d`",
    ),
    "lokr": (
        peftkit.LoKrConfig(target_modules=["lin", "norm"], r=2),
        "LoKrModel",
        f"{TORCH_LINEAR}, `torch.nn.Conv1d` and `torch.nn.Conv2d`",
    ),
    "randlora": (
        peftkit.RandLoraConfig(target_modules=["lin", "norm"], r=2),
        "RandLoraModel",
        f"{TORCH_LINEAR} and {HF_CONV1D}",
    ),
    "tinylora": (
        peftkit.TinyLoraConfig(target_modules=["lin", "norm"], r=2, u=2),
        "TinyLoraModel",
        f"{TORCH_LINEAR}, {HF_CONV1D} and `torch.nn.Embedding`",
    ),
    "vblora": (
        peftkit.VBLoRAConfig(target_modules=["lin", "norm"], r=2, num_vectors=4, vector_length=4),
        "VBLoRAModel",
        f"{TORCH_LINEAR} and {HF_CONV1D}",
    ),
    "trainable_tokens": (
        peftkit.TrainableTokensConfig(target_modules=["lin", "norm"], token_indices=[0]),
        "TrainableTokensModel",
        f"`torch.nn.Embedding` and {TORCH_LINEAR}",
    ),
}


def lin_and_norm() -> nn.Module:
    model = nn.Sequential()
    model.add_module("lin", nn.Linear(8, 8))
    model.add_module("norm", nn.LayerNorm(8))
    return model


@pytest.mark.parametrize("method", UNSUPPORTED_CASES)
def test_unsupported_layer_raises_one_error_naming_the_method_and_its_types(method):
    config, tuner_name, supported = UNSUPPORTED_CASES[method]
    model = lin_and_norm()
    with pytest.raises(UnsupportedLayerError) as caught:
        get_peft_model(model, config)
    message = str(caught.value)
    assert "LayerNorm" in message
    assert f"not supported by {tuner_name}." in message
    assert f"only adapters for {supported} are supported" in message
    assert "remove it from target_modules" in message
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, ValueError)
    assert not any(type(m).__module__.startswith("peftkit") for m in model.modules())  # rolled back


def test_every_layer_method_declares_its_dispatch():
    """Every registered tuner picks its layers from `layer_classes` (LN tuning: any module)."""
    from peftkit.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    # X-LoRA adds no layers of its own: its experts are LoRA layers, its classifier a plain module
    tuners = [
        t
        for t in PEFT_TYPE_TO_TUNER_MAPPING.values()
        if issubclass(t, BaseTuner) and t is not peftkit.XLoraModel
    ]
    assert len(tuners) >= 12  # the methods registered before the waves, and every method added since
    for tuner in tuners:
        assert tuner.layer_classes, tuner.__name__
        assert tuner._create_new_module is BaseTuner._create_new_module, tuner.__name__
    assert peftkit.LNTuningModel.layer_classes == {nn.Module: peftkit.tuners.ln_tuning.LNTuningLayer}


def test_lora_on_multihead_attention_is_dispatched_to_its_layer():
    model = nn.Sequential()
    model.add_module("attn", nn.MultiheadAttention(8, 2))
    layer = get_peft_model(model, LoraConfig(target_modules=["attn"])).base_model.model.attn
    assert type(layer) is peftkit.tuners.lora.MultiheadAttention
    assert type(layer.base_layer.out_proj) is peftkit.tuners.lora.Linear


def test_lora_keeps_picking_its_layers():
    model = nn.Sequential()
    for name, layer in {
        "lin": nn.Linear(4, 4),
        "gpt2": Conv1D(4, 4),
        "emb": nn.Embedding(10, 4),
        "c1": nn.Conv1d(4, 4, 1),
        "c2": nn.Conv2d(4, 4, 1),
        "c3": nn.Conv3d(4, 4, 1),
    }.items():
        model.add_module(name, layer)
    with pytest.warns(PeftWarning, match="target module is `Conv1D`. Setting fan_in_fan_out to True"):
        peft_model = get_peft_model(
            model, LoraConfig(target_modules=["lin", "gpt2", "emb", "c1", "c2", "c3"])
        )
    layers = peft_model.base_model.model
    lora = peftkit.tuners.lora
    kinds = {n: type(getattr(layers, n)) for n in ("lin", "gpt2", "emb", "c1", "c2", "c3")}
    assert kinds == {
        "lin": lora.Linear,
        "gpt2": lora.Linear,
        "emb": lora.Embedding,
        "c1": lora.Conv1d,
        "c2": lora.Conv2d,
        "c3": lora.Conv3d,
    }
    assert layers.gpt2.fan_in_fan_out and layers.gpt2.is_target_conv_1d_layer
    assert not layers.lin.fan_in_fan_out and not layers.lin.is_target_conv_1d_layer
    assert "fan_in_fan_out" not in layers.emb.kwargs and "fan_in_fan_out" not in layers.c2.kwargs


# ----- a toy method declared with the dispatch -----
class ToyLinear(LoraLinear):
    """The toy method's layer for linear bases."""


class ToyConv2d(LoraConv2d):
    """The toy method's layer for 2-d convolutions."""


class ToyModel(LoraModel):
    """A method that adapts only Linear, Conv1D and Conv2d bases, with its own layer classes."""

    layer_classes = {nn.Linear: ToyLinear, CONV1D: ToyLinear, nn.Conv2d: ToyConv2d}
    layer_dispatchers = ()


def toy_base() -> nn.Module:
    model = nn.Sequential()
    model.add_module("lin", nn.Linear(4, 4))
    model.add_module("gpt2", Conv1D(4, 4))
    model.add_module("conv", nn.Conv2d(4, 4, 1))
    model.add_module("emb", nn.Embedding(10, 4))
    return model


def test_a_toy_method_gets_the_layer_classes_it_declares():
    tuner = ToyModel(toy_base(), LoraConfig(target_modules=["lin", "gpt2", "conv"]), "default")
    assert type(tuner.model.lin) is ToyLinear
    assert type(tuner.model.gpt2) is ToyLinear and tuner.model.gpt2.is_target_conv_1d_layer
    assert type(tuner.model.conv) is ToyConv2d
    assert isinstance(tuner.model.emb, nn.Embedding)  # not targeted: left alone
    # a second adapter on an adapted layer is added to it, not wrapped again
    tuner.peft_config["other"] = LoraConfig(target_modules=["lin"])
    tuner.inject_adapter(tuner.model, "other")
    assert type(tuner.model.lin) is ToyLinear and set(tuner.model.lin.lora_A) == {"default", "other"}


def test_a_toy_method_refuses_what_it_does_not_declare():
    with pytest.raises(UnsupportedLayerError) as caught:
        ToyModel(toy_base(), LoraConfig(target_modules=["lin", "emb"]), "default")
    message = str(caught.value)
    assert "not supported by ToyModel" in message
    assert f"{TORCH_LINEAR}, {HF_CONV1D} and `torch.nn.Conv2d` are supported" in message


class Recorder(nn.Module):
    """A layer class that keeps the arguments it was built with."""

    def __init__(self, base_layer: nn.Module, **kwargs):
        super().__init__()
        self.base_layer, self.kwargs = base_layer, kwargs


class RecordingMethod:
    layer_classes = {nn.Linear: Recorder, CONV1D: Recorder, nn.Conv2d: Recorder}
    layer_dispatchers = ()


class FanConfig:
    def __init__(self, fan_in_fan_out: bool) -> None:
        self.fan_in_fan_out = fan_in_fan_out


@pytest.mark.parametrize(
    "base, given, expected, warns",
    [
        (nn.Linear(4, 4), False, False, False),
        (nn.Linear(4, 4), True, False, True),
        (Conv1D(4, 4), True, True, False),
        (Conv1D(4, 4), False, True, True),
    ],
    ids=["linear", "linear-corrected", "conv1d", "conv1d-corrected"],
)
def test_fan_in_fan_out_is_aligned_for_linear_kinds(base, given, expected, warns, recwarn):
    config = FanConfig(given)
    layer = create_layer(RecordingMethod, config, "a", base, {"fan_in_fan_out": given, "r": 2})
    assert config.fan_in_fan_out is expected and layer.kwargs["fan_in_fan_out"] is expected
    assert layer.kwargs["adapter_name"] == "a" and layer.kwargs["r"] == 2
    assert layer.kwargs.get("is_target_conv_1d_layer", False) is isinstance(base, Conv1D)
    fan_warnings = [w for w in recwarn if "fan_in_fan_out is set to" in str(w.message)]
    assert len(fan_warnings) == int(warns)


class KeepingMethod(RecordingMethod):
    keeps_config_fan_in_fan_out = True


@pytest.mark.parametrize(
    "base, given", [(nn.Linear(4, 4), True), (Conv1D(4, 4), False)], ids=["linear", "conv1d"]
)
def test_a_method_may_keep_the_config_s_fan_in_fan_out(base, given):
    """`keeps_config_fan_in_fan_out`: the layer gets the corrected value (with the same warning), the config
    keeps the user's (HiRA's saved config is then PEFT's)."""
    config = FanConfig(given)
    with pytest.warns(PeftWarning, match="fan_in_fan_out is set to"):
        layer = create_layer(KeepingMethod, config, "a", base, {"fan_in_fan_out": given})
    assert layer.kwargs["fan_in_fan_out"] is isinstance(base, Conv1D)
    assert config.fan_in_fan_out is given


def test_fan_in_fan_out_is_dropped_for_other_bases_and_kwargs_are_not_mutated():
    kwargs = {"fan_in_fan_out": True, "r": 2}
    config = FanConfig(True)
    layer = create_layer(RecordingMethod, config, "a", nn.Conv2d(4, 4, 1), kwargs)
    assert "fan_in_fan_out" not in layer.kwargs and config.fan_in_fan_out is True
    assert kwargs == {"fan_in_fan_out": True, "r": 2}


def test_a_config_without_fan_in_fan_out_is_left_alone():
    layer = create_layer(RecordingMethod, object(), "a", nn.Linear(4, 4), {"r": 2})
    assert layer.kwargs == {"adapter_name": "a", "r": 2}


def test_dispatchers_run_first_and_may_pass():
    seen = []

    def passes(target, adapter_name, **kwargs):
        seen.append("passes")
        return None

    def takes_linear(target, adapter_name, **kwargs):
        seen.append("takes")
        return nn.Identity() if isinstance(target, nn.Linear) else None

    class Method(RecordingMethod):
        layer_dispatchers = (passes, takes_linear)

    assert isinstance(create_layer(Method, object(), "a", nn.Linear(4, 4), {}), nn.Identity)
    assert isinstance(create_layer(Method, object(), "a", nn.Conv2d(4, 4, 1), {}), Recorder)
    assert seen == ["passes", "takes", "passes", "takes"]


def test_the_base_layer_under_an_adapter_decides():
    tuner = LoraModel(toy_base(), LoraConfig(target_modules=["conv"]), "default")
    layer = create_layer(RecordingMethod, object(), "b", tuner.model.conv, {})
    assert layer.base_layer is tuner.model.conv  # wraps the adapter layer, chosen by its Conv2d base


def test_supported_types_are_named_as_users_write_them():
    assert supported_types({nn.Linear: Recorder}) == TORCH_LINEAR
    assert (
        supported_types({CONV1D: Recorder, torch.nn.Conv2d: Recorder}) == f"{HF_CONV1D} and `torch.nn.Conv2d`"
    )
    assert supported_types({Recorder: Recorder}) == f"`{__name__}.Recorder`"


def test_declaring_conv1d_does_not_import_transformers():
    code = (
        "import sys, peftkit\n"
        "from peftkit.tuners._dispatch import CONV1D\n"
        "assert CONV1D in peftkit.LoraModel.layer_classes\n"
        "print('transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
