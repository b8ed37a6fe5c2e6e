"""LoRA on `nn.MultiheadAttention`: peft's module tree and files, the LoRA formula on both projections.

peft 0.21.2 applies the output projection's delta twice in its forward (it adds it to the weight and then
merges the same adapter into it again); peftkit applies it once, as the LoRA formula says (README,
"Where peftkit deliberately differs"). The tests pin both: peftkit against the formula, peft against the
doubled formula, and the two libraries equal where the output projection's adapter is zero.
"""

from __future__ import annotations

import copy

import peft
import pytest
import torch
from torch import nn

import peftkit

ATOL = 1e-6  # fp32, the same weights: adapted weights, one attention call


class Attention(nn.Module):
    def __init__(self, **mha_kwargs) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, **mha_kwargs)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, x, x)[0])


def _base() -> Attention:
    torch.manual_seed(0)
    return Attention().eval()


def _inputs() -> torch.Tensor:
    return torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(1))


CONFIG = dict(target_modules=["attn"], r=4, lora_alpha=8, init_lora_weights=False)


def _pair(base: nn.Module, **overrides):
    kwargs = CONFIG | overrides
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kwargs))
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(**kwargs))
    peftkit.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs))
    return theirs.eval(), ours.eval()


def _reference(base: nn.Module, model, out_proj_factor: float = 1.0) -> nn.Module:
    """`base` with s B A added to in_proj_weight and `out_proj_factor` * s B' A' to out_proj.weight."""
    layer = model.base_model.model.attn
    out_layer = layer.base_layer.out_proj
    reference = copy.deepcopy(base)
    with torch.no_grad():
        for lora, weight, factor in (
            (layer, reference.attn.in_proj_weight, 1.0),
            (out_layer, reference.attn.out_proj.weight, out_proj_factor),
        ):
            weight += (
                factor
                * lora.scaling["default"]
                * (lora.lora_B["default"].weight @ lora.lora_A["default"].weight)
            )
    return reference


def test_module_tree_trainable_names_and_file_keys_are_peft_s(tmp_path):
    theirs, ours = _pair(_base())
    names = lambda m: sorted(n for n, p in m.named_parameters() if p.requires_grad)  # noqa: E731
    assert names(ours) == names(theirs)
    assert len(names(ours)) == 4  # A and B of both projections
    assert sorted(peftkit.get_peft_model_state_dict(ours)) == sorted(peft.get_peft_model_state_dict(theirs))
    assert isinstance(ours.base_model.model.attn, peftkit.tuners.lora.MultiheadAttention)
    assert ours.base_model.model.attn.out_proj is ours.base_model.model.attn.base_layer.out_proj.base_layer


def test_forward_is_the_lora_formula_and_peft_doubles_the_output_projection():
    base = _base()
    theirs, ours = _pair(base)
    x = _inputs()
    with torch.no_grad():
        assert (ours(x) - _reference(base, ours)(x)).abs().max() <= ATOL
        assert (theirs(x) - _reference(base, ours, out_proj_factor=2.0)(x)).abs().max() <= ATOL
        assert (ours(x) - base(x)).abs().max() > 1e-2


def test_equal_to_peft_where_the_output_projection_adapter_is_zero():
    theirs, ours = _pair(_base())
    for model in (theirs, ours):
        nn.init.zeros_(model.base_model.model.attn.base_layer.out_proj.lora_B["default"].weight)
    x = _inputs()
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max() <= ATOL


def test_files_move_both_ways(tmp_path):
    base = _base()
    theirs, ours = _pair(base)
    x = _inputs()
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    for folder, lib in ((tmp_path / "ours", peft), (tmp_path / "theirs", peftkit)):
        loaded = lib.PeftModel.from_pretrained(copy.deepcopy(base), folder).eval()
        original = theirs if lib is peftkit else ours
        for name, tensor in original.named_parameters():
            if "lora_" in name:
                assert torch.equal(loaded.get_parameter(name), tensor), name
    with torch.no_grad():
        loaded = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "theirs").eval()
        assert (loaded(x) - ours(x)).abs().max() <= ATOL


def test_merge_unmerge_disable_and_unload_agree_with_the_forward():
    base = _base()
    _, ours = _pair(base)
    x = _inputs()
    with torch.no_grad():
        expected = ours(x)
        ours.merge_adapter()
        assert ours.base_model.model.attn.merged and ours.base_model.model.attn.base_layer.out_proj.merged
        assert (ours(x) - expected).abs().max() <= 1e-5
        ours.unmerge_adapter()
        assert (ours(x) - expected).abs().max() <= 1e-5
        assert (ours.base_model.model.attn.in_proj_weight - base.attn.in_proj_weight).abs().max() <= 1e-6
        with ours.disable_adapter():
            assert (ours(x) - base(x)).abs().max() <= ATOL
        merged = copy.deepcopy(ours).merge_and_unload()
        assert type(merged.attn) is nn.MultiheadAttention
        assert type(merged.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
        assert (merged(x) - expected).abs().max() <= 1e-5
        unloaded = copy.deepcopy(ours).unload()
        assert type(unloaded.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
        assert (unloaded(x) - base(x)).abs().max() <= ATOL


def test_training_moves_both_projections_adapters_and_lowers_the_loss():
    _, ours = _pair(_base())
    x, target = _inputs(), torch.randn(3, 5, 3, generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.Adam([p for p in ours.parameters() if p.requires_grad], lr=1e-2)
    before = {n: p.detach().clone() for n, p in ours.named_parameters() if p.requires_grad}
    losses = []
    ours.train()
    for _ in range(20):
        optimizer.zero_grad()
        loss = (ours(x) - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all((p - before[n]).abs().max() > 0 for n, p in ours.named_parameters() if p.requires_grad)
    assert all(not p.requires_grad for n, p in ours.named_parameters() if "lora_" not in n)


def test_transformer_encoder_layer_inference_uses_the_adapter():
    torch.manual_seed(0)
    base = nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, dropout=0.0)).eval()
    x = _inputs()
    answers = {}
    for lib in (peft, peftkit):
        model = lib.get_peft_model(
            copy.deepcopy(base), lib.LoraConfig(target_modules=["self_attn"], init_lora_weights=False)
        )
        model.eval()
        with torch.no_grad():  # inference: the layer's fused kernel reads the attention's weights directly
            out = model(x)
            merged = copy.deepcopy(model).merge_and_unload()(x)
        answers[lib.__name__] = (out - merged).abs().max().item()
    assert answers["peftkit"] <= ATOL
    assert answers["peft"] > 1e-2  # peft's fused path skips the adapters


def test_several_adapters_switch_and_delete():
    _, ours = _pair(_base())
    x = _inputs()
    ours.add_adapter("other", peftkit.LoraConfig(**CONFIG))
    with torch.no_grad():
        first = ours(x)
        ours.set_adapter("other")
        second = ours(x)
        assert (first - second).abs().max() > 1e-3
        ours.delete_adapter("default")
    layer = ours.base_model.model.attn
    assert sorted(layer.lora_A) == sorted(layer.base_layer.out_proj.lora_A) == ["other"]
    with torch.no_grad():
        assert (ours(x) - second).abs().max() <= ATOL


@pytest.mark.parametrize(
    ("mha_kwargs", "config", "match"),
    [
        ({"kdim": 4, "vdim": 4}, {}, "_qkv_same_embed_dim"),
        ({}, {"use_dora": True}, "does not support DoRA"),
        ({}, {"lora_bias": True}, "does not support lora_bias"),
    ],
)
def test_unsupported_settings_are_clear_errors(mha_kwargs, config, match):
    torch.manual_seed(0)
    model = Attention(**mha_kwargs)
    with pytest.raises(ValueError, match=match):
        peftkit.get_peft_model(model, peftkit.LoraConfig(**(CONFIG | config)))
    assert type(model.attn) is nn.MultiheadAttention  # nothing left half-adapted


def test_mixed_batches_and_conversion_are_refused():
    _, ours = _pair(_base())
    with pytest.raises(TypeError, match="mixed adapter batches"):
        ours.base_model.model.attn(_inputs(), _inputs(), _inputs(), adapter_names=["default"] * 3)
    with pytest.raises(TypeError, match="MultiheadAttention"):
        peftkit.convert_to_lora(ours, 2)


@pytest.mark.parametrize("targets", [["out_proj", "head"], "all-linear"], ids=["named", "all-linear"])
def test_the_attention_s_out_proj_is_never_adapted_alone(targets):
    # peft puts a LoRA layer there that the attention never calls (no effect); peftkit leaves it out and says so
    with pytest.warns(peftkit.PeftWarning, match=r"\['attn.out_proj'\] are the output projections"):
        model = peftkit.get_peft_model(_base(), peftkit.LoraConfig(target_modules=targets))
    assert model.base_model.targeted_module_names == ["head"]
    assert type(model.base_model.model.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    with (
        pytest.warns(peftkit.PeftWarning, match="output projections"),
        pytest.raises(ValueError, match="not found"),
    ):
        peftkit.get_peft_model(_base(), peftkit.LoraConfig(target_modules=["out_proj"]))
