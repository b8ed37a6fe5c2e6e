"""The LoRA variant seam: a variant attached to an adapter replaces the formula's pieces it declares, and
every fast path steps aside for it, through the one plain-adapter predicate."""

import re

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import perturb_adapter_weights, tiny_llama
from torch import nn

import peftkit
from peftkit.tuners.lora import fast_paths, mixed_batch
from peftkit.tuners.lora.alora import AloraVariant
from peftkit.tuners.lora.bdlora import BdLoraConfig, BdLoraVariant
from peftkit.tuners.lora.dora import DoraEmbeddingVariant, DoraVariant
from peftkit.tuners.lora.variants import LoraVariant, add_adapter_container

ATOL = 1e-6


class DoubledVariant(LoraVariant):
    """A toy variant: the adapter counts twice, unmerged (`y = base(x) + 2 s B A x`) and merged
    (`delta W = 2 s B A`); it records which hooks ran."""

    name = "doubled"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def init(self, layer, adapter_name, inference_mode=False):
        self.calls.append("init")

    def delta_weight(self, layer, adapter_name):
        self.calls.append("delta_weight")
        return 2 * layer._delta_weight(adapter_name)

    def forward(self, layer, adapter_name, x, result, base_result):
        self.calls.append("forward")
        return layer._add_adapter_output(result, 2 * layer._adapter_output(adapter_name, x, base_result))


def _model():
    """One adapted Linear (8 -> 6) with adapters "default" and "other" (perturbed), and the layer."""
    torch.manual_seed(0)
    model = peftkit.get_peft_model(
        nn.Sequential(nn.Linear(8, 6)), peftkit.LoraConfig(target_modules=["0"], r=4)
    )
    model.add_adapter("other", peftkit.LoraConfig(target_modules=["0"], r=2, lora_alpha=4))
    for name in ("default", "other"):
        model.set_adapter(name)
        perturb_adapter_weights(model, seed=len(name))
    model.set_adapter("default")
    return model, model.base_model.model[0]


def _formula(layer, name, x, factor=1.0):
    """`base(x) + factor * s * x A^T B^T`, op by op."""
    A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
    return layer.base_layer(x) + factor * layer.scaling[name] * (x @ A.T @ B.T)


def _spy(monkeypatch, name, module=fast_paths):
    """Record the adapter names (second argument) `module.<name>` is called with (the layer looks the
    function up there at each call)."""
    calls = []
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *args: calls.append(args[1]) or original(*args))
    return calls


def _spy_fast_paths(monkeypatch):
    return {
        "fused": _spy(monkeypatch, "fused_training_forward"),
        "in_place": _spy(monkeypatch, "add_in_place"),
        "gathered": _spy(monkeypatch, "factor_bank", mixed_batch),
    }


X = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(1))


def _outputs_in_every_mode(model, layer):
    """The layer's output for "default" in training, in eval without grad, and in a mixed batch."""
    model.train()
    training = layer(X)
    model.eval()
    with torch.no_grad():
        inference = layer(X)
        mixed = layer(X, adapter_names=["default", "__base__", "other"])
    return training, inference, mixed


def test_plain_adapters_take_every_fast_path(monkeypatch):
    """The positive control: without a variant, each mode runs its fast path."""
    model, layer = _model()
    calls = _spy_fast_paths(monkeypatch)
    training, inference, mixed = _outputs_in_every_mode(model, layer)
    assert calls["fused"] and calls["in_place"] and calls["gathered"]
    expected = _formula(layer, "default", X)
    torch.testing.assert_close(training, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(inference, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(mixed[0], expected[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(mixed[1], layer.base_layer(X[1]), atol=ATOL, rtol=0)
    torch.testing.assert_close(mixed[2], _formula(layer, "other", X[2]), atol=ATOL, rtol=0)


def test_a_variant_replaces_the_forward_in_training_eval_and_mixed_batches(monkeypatch):
    model, layer = _model()
    variant = DoubledVariant()
    layer.set_lora_variant("default", variant)
    assert layer.lora_variant == {"default": variant} and variant.calls == ["init"]
    calls = _spy_fast_paths(monkeypatch)
    training, inference, mixed = _outputs_in_every_mode(model, layer)
    assert variant.calls.count("forward") == 3  # training, eval, and the mixed batch's "default" group
    assert not calls["fused"]
    # in a mixed batch the plain adapter is stacked alone; the variant's samples get its own forward
    assert calls["gathered"] == [("other",)] and not calls["in_place"]
    expected = _formula(layer, "default", X, factor=2.0)
    torch.testing.assert_close(training, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(inference, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(mixed[0], expected[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(mixed[1], layer.base_layer(X[1]), atol=ATOL, rtol=0)
    torch.testing.assert_close(mixed[2], _formula(layer, "other", X[2]), atol=ATOL, rtol=0)


def test_a_variant_replaces_the_merge():
    model, layer = _model()
    layer.set_lora_variant("default", DoubledVariant())
    weight = layer.base_layer.weight.detach().clone()
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    torch.testing.assert_close(layer.get_delta_weight("default"), 2 * layer.scaling["default"] * B @ A)
    model.eval()
    with torch.no_grad():
        unmerged = layer(X)
        model.merge_adapter()
        expected = weight + 2 * layer.scaling["default"] * B @ A
        torch.testing.assert_close(layer.base_layer.weight, expected, atol=ATOL, rtol=0)
        torch.testing.assert_close(layer(X), unmerged, atol=ATOL, rtol=0)
        model.unmerge_adapter()
    torch.testing.assert_close(layer.base_layer.weight, weight, atol=ATOL, rtol=0)


def test_every_fast_path_asks_the_one_plain_adapter_predicate(monkeypatch):
    """With the predicate saying "not plain", no fast path runs, and the formula gives the same values."""
    model, layer = _model()
    monkeypatch.setattr(fast_paths, "is_plain_adapter", lambda layer, name: False)
    calls = _spy_fast_paths(monkeypatch)
    training, inference, mixed = _outputs_in_every_mode(model, layer)
    assert not any(calls.values())
    expected = _formula(layer, "default", X)
    torch.testing.assert_close(training, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(inference, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(mixed[0], expected[0], atol=ATOL, rtol=0)


def test_unsupported_operations_are_refused_with_the_variants_name():
    class Unmergeable(DoubledVariant):
        supports_merge = False
        supports_mixed_batch = False

    model, layer = _model()
    layer.set_lora_variant("default", Unmergeable())
    model.eval()
    with pytest.raises(ValueError, match="not supported with doubled adapters"):
        layer(X, adapter_names=["default", "other", "other"])
    with pytest.raises(NotImplementedError, match="doubled does not support merging"):
        model.merge_adapter(["other", "default"])
    assert not layer.merged  # refused before any adapter was merged
    model.merge_adapter(["other"])  # the plain adapter still merges
    assert layer.merged_adapters == ["other"]


def test_deleting_or_recreating_an_adapter_drops_its_variant():
    model, layer = _model()
    layer.set_lora_variant("other", DoubledVariant())
    model.delete_adapter("other")
    assert "other" not in layer.lora_variant
    layer.set_lora_variant("default", DoubledVariant())
    layer.update_layer("default", r=2, lora_alpha=2)
    assert "default" not in layer.lora_variant


def test_dora_alora_and_bdlora_are_variants_in_one_place():
    dora = peftkit.get_peft_model(
        tiny_llama(), peftkit.LoraConfig(target_modules=["q_proj", "embed_tokens"], use_dora=True)
    )
    inner = dora.base_model.model.model
    assert type(inner.layers[0].self_attn.q_proj.lora_variant["default"]) is DoraVariant
    assert type(inner.embed_tokens.lora_variant["default"]) is DoraEmbeddingVariant
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector.default.weight" in (
        dora.state_dict()
    )

    alora = peftkit.get_peft_model(
        tiny_llama(),
        peftkit.LoraConfig(
            target_modules=["q_proj", "v_proj"], alora_invocation_tokens=[7], task_type="CAUSAL_LM"
        ),
    )
    attn = alora.base_model.model.model.layers[0].self_attn
    variants = [attn.q_proj.lora_variant["default"], attn.v_proj.lora_variant["default"]]
    assert all(type(v) is AloraVariant for v in variants)
    assert variants[0].context is variants[1].context  # one activation context per adapter

    bd = BdLoraConfig(target_modules_bd_a=["o_proj"], target_modules_bd_b=["q_proj"], nblocks=2)
    bdlora = peftkit.get_peft_model(
        tiny_llama(), peftkit.LoraConfig(r=4, target_modules=["q_proj", "o_proj"], use_bdlora=bd)
    )
    attn = bdlora.base_model.model.model.layers[0].self_attn
    assert (attn.q_proj.lora_variant["default"].side, attn.o_proj.lora_variant["default"].side) == ("B", "A")
    assert type(attn.q_proj.lora_variant["default"]) is BdLoraVariant

    plain = peftkit.get_peft_model(tiny_llama(), peftkit.LoraConfig(target_modules=["q_proj"]))
    assert plain.base_model.model.model.layers[0].self_attn.q_proj.lora_variant == {}


class _ContainerVariant(DoubledVariant):
    """A toy variant with a trainable per-adapter vector of its own, frozen B, and a log of the adapters
    its layer gained or lost."""

    def init(self, layer, adapter_name, inference_mode=False):
        super().init(layer, adapter_name, inference_mode)
        gains = add_adapter_container(layer, "lora_toy_gain", nn.ParameterDict)
        gains[adapter_name] = nn.Parameter(torch.ones(layer.r[adapter_name]))
        layer._finish_new_adapter(adapter_name, inference_mode)
        layer.freeze_adapter_weights(adapter_name, "lora_B")
        self.seen: list[list[str]] = []

    def on_adapters_changed(self, layer, adapter_name):
        self.seen.append(sorted(layer.lora_A))


def test_variant_containers_frozen_factors_and_adapter_changes(tmp_path):
    torch.manual_seed(0)
    variant = _ContainerVariant()
    model = peftkit.get_peft_model(
        nn.Sequential(nn.Linear(8, 6)), peftkit.LoraConfig(target_modules=["0"], r=4)
    )
    layer = model.base_model.model[0]
    layer.set_lora_variant("default", variant)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "base_model.model.0.lora_A.default.weight",
        "base_model.model.0.lora_toy_gain.default",
    }
    assert (
        "lora_toy_gain" in layer.adapter_layer_names
        and "lora_toy_gain" not in type(layer).adapter_layer_names
    )
    # B stays frozen whatever makes the adapter trainable again
    for step in (lambda: model.set_adapter("default"), model.enable_adapter_layers):
        model.disable_adapter_layers()
        step()
        assert (
            not layer.lora_B["default"].weight.requires_grad and layer.lora_A["default"].weight.requires_grad
        )
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert "base_model.model.0.lora_toy_gain" in saved  # a container of the variant is saved like the factors
    # the variant hears about the layer's other adapters coming and going
    model.add_adapter("other", peftkit.LoraConfig(target_modules=["0"], r=2))
    model.delete_adapter("other")
    assert variant.seen == [["default", "other"], ["default"]]
    model.add_adapter("third", peftkit.LoraConfig(target_modules=["0"], r=2))
    model.delete_adapter("default")  # its container entry and frozen-weights entry go with it
    assert "default" not in layer.lora_toy_gain and "default" not in layer.frozen_peft_weight_names


def test_at_most_one_variant_per_config_with_peft_s_error():
    for fields in (
        {"use_dora": True, "kasa_config": peftkit.KasaConfig()},
        {"init_lora_weights": "mica", "velora_config": peftkit.VeloraConfig()},
        {"use_qalora": True, "monteclora_config": peftkit.MontecloraConfig()},
    ):
        model = tiny_llama()
        expected = str(tuple(sorted("mica" if k == "init_lora_weights" else k for k in fields)))
        message = re.escape(f"Invalid or unsupported variant combination: {expected}")
        for mixed in (False, True):  # a mixed model creates LoRA layers without LoraModel.inject_adapter
            with pytest.raises(ValueError, match=message):
                peftkit.get_peft_model(
                    model, peftkit.LoraConfig(target_modules=["q_proj"], **fields), mixed=mixed
                )
            assert type(model.model.layers[0].self_attn.q_proj) is nn.Linear


def test_target_parameters_refuse_variants_naming_the_field():
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ValueError, match="`velora_config` is set"):
        peftkit.get_peft_model(
            model,
            peftkit.LoraConfig(
                target_modules=[], target_parameters=["0.weight"], velora_config={"num_groups": 2}
            ),
        )
