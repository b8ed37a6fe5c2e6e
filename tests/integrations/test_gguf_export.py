"""Exporting LoRA adapters to llama.cpp's GGUF format, checked with llama.cpp's forward written in torch
(tests/integrations/gguf_llama.py); the real llama.cpp runtime is tests/integrations/test_llamacpp_runtime.py."""

from __future__ import annotations

import copy

import gguf
import pytest
import torch
from tests.conftest import perturb_adapter_weights
from tests.integrations.gguf_llama import (
    IDS,
    peft_logits,
    reference_logits,
    tiny_llama_for_gguf,
    write_llama_gguf,
)

from peftkit import IA3Config, LoraConfig, get_peft_model
from peftkit.integrations.gguf import GGUFConversionError, export_lora_to_gguf, read_gguf_lora
from peftkit.persistence.lora_factors import UnsupportedAdapterError

# llama.cpp's forward in torch vs transformers' in fp32: they differ only in the order of operations
LOGITS_ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny Llama, as a GGUF model file and as a transformers folder."""
    folder = tmp_path_factory.mktemp("gguf-export")
    model = tiny_llama_for_gguf()
    write_llama_gguf(model, folder / "base.gguf")
    model.save_pretrained(folder / "hf")
    return model, folder


def _adapter(model, path, seed=0, **config):
    config = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear", **config}
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(**config))
    perturb_adapter_weights(peft_model, seed=seed, scale=0.05)
    peft_model.save_pretrained(path)
    return peft_model


def test_file_has_llama_cpps_adapter_metadata_and_tensor_names(tiny, tmp_path):
    model, folder = tiny
    model.name_or_path = str(folder / "base.gguf")  # recorded by the adapter as its base
    try:
        _adapter(model, tmp_path / "adapter", target_modules=["q_proj", "down_proj"])
    finally:
        model.name_or_path = ""
    done = export_lora_to_gguf(tmp_path / "adapter", tmp_path / "adapter.gguf")  # base: the recorded one
    assert (done.architecture, done.alpha, done.modules, done.tensor_types) == ("llama", 8.0, 4, {"F32": 8})
    reader = gguf.GGUFReader(tmp_path / "adapter.gguf")
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "llama" and fields["adapter.lora.alpha"] == 8.0
    assert fields["general.base_model.0.name"] == str(folder / "base.gguf")
    shapes = {t.name: list(t.shape) for t in reader.tensors}  # GGML order: (columns, rows)
    assert shapes == {
        f"blk.{i}.{kind}.weight.lora_{ab}": shape
        for i in range(2)
        for kind, ab, shape in [
            ("attn_q", "a", [64, 4]),
            ("attn_q", "b", [4, 64]),
            ("ffn_down", "a", [128, 4]),
            ("ffn_down", "b", [4, 64]),
        ]
    }


@pytest.mark.parametrize("base", ["base.gguf", "hf"])
def test_llama_cpps_forward_with_the_export_gives_peftkits_logits(tiny, tmp_path, base):
    model, folder = tiny
    peft_model = _adapter(model, tmp_path / "adapter")
    export_lora_to_gguf(tmp_path / "adapter", tmp_path / "adapter.gguf", base=folder / base)
    expected = peft_logits(peft_model)
    assert (reference_logits(folder / "base.gguf", IDS) - peft_logits(model)).abs().max() < LOGITS_ATOL
    assert (expected - peft_logits(model)).abs().max() > 0.1  # the adapter changes the logits
    assert (
        reference_logits(folder / "base.gguf", IDS, tmp_path / "adapter.gguf") - expected
    ).abs().max() < LOGITS_ATOL


def test_without_the_query_key_row_order_the_logits_would_differ(tiny, tmp_path, monkeypatch):
    import peftkit.integrations.gguf.export as export

    model, folder = tiny
    peft_model = _adapter(model, tmp_path / "adapter", target_modules=["q_proj", "k_proj"])
    monkeypatch.setattr(export, "interleave_rows", lambda b, *args: b)
    export_lora_to_gguf(tmp_path / "adapter", tmp_path / "wrong.gguf", base=folder / "base.gguf")
    wrong = reference_logits(folder / "base.gguf", IDS, tmp_path / "wrong.gguf")
    assert (wrong - peft_logits(peft_model)).abs().max() > 100 * LOGITS_ATOL


def test_an_adapter_saved_by_peft_exports_too(tiny, tmp_path):
    import peft

    model, folder = tiny
    peft_model = peft.get_peft_model(
        copy.deepcopy(model),
        peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    )
    perturb_adapter_weights(peft_model, scale=0.05)
    peft_model.save_pretrained(tmp_path / "peft-adapter")
    export_lora_to_gguf(tmp_path / "peft-adapter", tmp_path / "adapter.gguf", base=folder / "base.gguf")
    got = reference_logits(folder / "base.gguf", IDS, tmp_path / "adapter.gguf")
    assert (got - peft_logits(peft_model)).abs().max() < LOGITS_ATOL


def test_module_scales_llama_cpp_cannot_express_are_folded_into_b(tiny, tmp_path):
    model, folder = tiny
    peft_model = _adapter(
        model,
        tmp_path / "adapter",
        r=8,
        lora_alpha=16,
        use_rslora=True,
        rank_pattern={"down_proj": 2},
        alpha_pattern={"v_proj": 3},
    )
    done = export_lora_to_gguf(tmp_path / "adapter", tmp_path / "adapter.gguf", base=folder / "base.gguf")
    assert done.alpha == pytest.approx(16 * 8**0.5, rel=1e-6)  # rsLoRA's 16/sqrt(8) as llama.cpp's alpha/8
    got = reference_logits(folder / "base.gguf", IDS, tmp_path / "adapter.gguf")
    assert (got - peft_logits(peft_model)).abs().max() < LOGITS_ATOL


@pytest.mark.parametrize(
    "dtype, types, rel_error",
    [
        ("f16", {"F16": 28}, 1e-3),
        ("bf16", {"BF16": 28}, 8e-3),
        # rank-4 B rows are shorter than Q8_0's 32-value blocks: those are written in f16
        ("q8_0", {"Q8_0": 14, "F16": 14}, 1.0 / 127),
    ],
)
def test_smaller_types_store_the_factors_within_their_precision(tiny, tmp_path, dtype, types, rel_error):
    model, folder = tiny
    _adapter(model, tmp_path / "adapter")
    export_lora_to_gguf(tmp_path / "adapter", tmp_path / "f32.gguf", base=folder / "base.gguf")
    done = export_lora_to_gguf(
        tmp_path / "adapter", tmp_path / "x.gguf", base=folder / "base.gguf", dtype=dtype
    )
    assert done.tensor_types == types
    exact, stored = read_gguf_lora(tmp_path / "f32.gguf").pairs, read_gguf_lora(tmp_path / "x.gguf").pairs
    for name, factors in exact.items():
        for want, got in zip(factors, stored[name]):
            row_max = want.abs().amax(dim=1, keepdim=True)  # q8_0 scales each block by its largest value
            assert ((got - want).abs() <= rel_error * row_max + 1e-8).all(), name


@pytest.mark.parametrize(
    "config, message",
    [
        (LoraConfig(r=4, target_modules=["q_proj"], use_dora=True), "DoRA"),
        (
            LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]),
            "modules_to_save copy (lm_head.weight)",
        ),
        (LoraConfig(r=4, target_modules=["embed_tokens", "q_proj"]), "a LoRA on token embeddings"),
        (LoraConfig(r=4, target_modules=["q_proj"], lora_bias=True), "lora_bias"),
        (
            IA3Config(target_modules=["k_proj"], feedforward_modules=[]),
            "is a IA3 adapter; only LoRA adapters",
        ),
    ],
)
def test_adapters_that_are_not_plain_lora_are_refused_naming_the_part(tiny, tmp_path, config, message):
    model, folder = tiny
    peft_model = get_peft_model(copy.deepcopy(model), config)
    peft_model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(
        UnsupportedAdapterError, match="cannot be exported to llama.cpp|only LoRA adapters"
    ) as caught:
        export_lora_to_gguf(tmp_path / "adapter", tmp_path / "adapter.gguf", base=folder / "base.gguf")
    assert message in str(caught.value)
    assert not (tmp_path / "adapter.gguf").exists()


def test_modules_llama_cpp_has_no_place_for_are_named(tiny, tmp_path):
    model, _ = tiny
    _adapter(model, tmp_path / "adapter", target_modules=["q_proj", "lm_head"])
    tied = copy.deepcopy(model.config)
    tied.tie_word_embeddings = True
    tied.save_pretrained(tmp_path / "tied")
    with pytest.raises(GGUFConversionError, match="lm_head .the base model ties its output head"):
        export_lora_to_gguf(tmp_path / "adapter", tmp_path / "a.gguf", base=tmp_path / "tied")
    shallow = copy.deepcopy(model.config)
    shallow.num_hidden_layers = 1
    shallow.save_pretrained(tmp_path / "shallow")
    with pytest.raises(
        GGUFConversionError, match=r"model.layers.1.self_attn.q_proj \(the base model has 1 layers\)"
    ):
        export_lora_to_gguf(tmp_path / "adapter", tmp_path / "a.gguf", base=tmp_path / "shallow")
    other = tiny_llama_for_gguf()
    other.config.intermediate_size = 96
    write_llama_gguf(type(other)(other.config), tmp_path / "other.gguf")
    _adapter(model, tmp_path / "mlp", target_modules=["up_proj"])
    with pytest.raises(GGUFConversionError, match=r"delta 128x64, base weight blk.0.ffn_up.weight 96x64"):
        export_lora_to_gguf(tmp_path / "mlp", tmp_path / "a.gguf", base=tmp_path / "other.gguf")
    assert not (tmp_path / "a.gguf").exists()


def test_the_base_model_must_be_known_and_supported(tiny, tmp_path, monkeypatch):
    from transformers import GPT2Config

    model, _ = tiny
    _adapter(model, tmp_path / "adapter", target_modules=["q_proj"])  # records no base model
    with pytest.raises(GGUFConversionError, match="records no base model; pass the base model"):
        export_lora_to_gguf(tmp_path / "adapter", tmp_path / "a.gguf")
    GPT2Config().save_pretrained(tmp_path / "gpt2")
    with pytest.raises(
        GGUFConversionError, match="is a 'gpt2' model; llama.cpp adapters can be exported for"
    ):
        export_lora_to_gguf(tmp_path / "adapter", tmp_path / "a.gguf", base=tmp_path / "gpt2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        GGUFConversionError, match="'nobody/no-such-model' is not a local path.*Hub cache .offline."
    ):
        export_lora_to_gguf(tmp_path / "adapter", tmp_path / "a.gguf", base="nobody/no-such-model")


def test_export_never_leaves_a_partial_file(tiny, tmp_path, monkeypatch):
    model, folder = tiny
    _adapter(model, tmp_path / "adapter")
    target = tmp_path / "out" / "adapter.gguf"
    export_lora_to_gguf(tmp_path / "adapter", target, base=folder / "base.gguf")
    before = target.read_bytes()
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        export_lora_to_gguf(tmp_path / "adapter", target, base=folder / "base.gguf")

    def crash(self):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", crash)
    with pytest.raises(OSError, match="disk full"):
        export_lora_to_gguf(
            tmp_path / "adapter", target, base=folder / "base.gguf", dtype="f16", overwrite=True
        )
    assert target.read_bytes() == before  # the old file, untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["adapter.gguf"]  # no temporary file left
    with pytest.raises(ValueError, match="dtype must be one of f32, f16, bf16, q8_0"):
        export_lora_to_gguf(tmp_path / "adapter", target, dtype="q4_0", overwrite=True)


def test_factors_are_exported_in_float32_whatever_the_adapter_dtype(tiny, tmp_path):
    model, folder = tiny
    peft_model = _adapter(model, tmp_path / "adapter", target_modules=["v_proj"])
    peft_model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    export_lora_to_gguf(tmp_path / "bf16", tmp_path / "a.gguf", base=folder / "base.gguf")
    (lora_a, lora_b) = read_gguf_lora(tmp_path / "a.gguf").pairs["blk.0.attn_v.weight"]
    saved = peft_model.base_model.model.model.layers[0].self_attn.v_proj
    assert lora_a.dtype == torch.float32 and torch.equal(lora_a, saved.lora_A["default"].weight.float())
    assert torch.equal(lora_b, saved.lora_B["default"].weight.float())
