"""FRoD against peft: the shared bases and sparse positions bit-identical for a key, files move both ways
(with and without saved projections) with the same logits and names, merge writes the rebuilt weight and
unmerge restores the original exactly, U follows a loaded basis, the base layer is skipped where peft skips it."""

import copy

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.conftest import conv_net, llama_inputs, perturb_adapter_weights, tiny_bert, tiny_gpt2, tiny_llama
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case
from torch import nn

import peftkit
from peftkit.tuners.frod.projections import category_of, layer_index_of

METHOD = "FrodConfig"
QVD = {"target_modules": ["q_proj", "v_proj", "down_proj"], "sparse_rate": 0.05, "progressbar": False}

CASES = {
    "llama_q_v_down": Case(tiny_llama, QVD),
    "llama_no_saved_projection": Case(
        tiny_llama, {**QVD, "save_projection": False, "projection_prng_key": 5}
    ),
    "llama_defaults": Case(tiny_llama, {"progressbar": False}, task_type="CAUSAL_LM"),
    "gpt2_conv1d": Case(
        tiny_gpt2, {"target_modules": ["c_attn", "c_fc"], "sparse_rate": 0.02, "progressbar": False}
    ),
    "bert_seq_cls_no_sparse": Case(
        tiny_bert,
        {"target_modules": ["query", "output.dense"], "sparse_rate": 0.0, "progressbar": False},
        task_type="SEQ_CLS",
    ),
    "llama_bias_frod_only": Case(
        lambda: tiny_llama(attention_bias=True), {**QVD, "bias": "frod_only", "init_weights": False}
    ),
}
# a trained bias, or a trained classifier head, is not undone by disabling or unloading the adapter
PLAIN = {
    name: CASES[name]
    for name in ("llama_q_v_down", "llama_no_saved_projection", "llama_defaults", "gpt2_conv1d")
}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v_down",
        merge=PLAIN,
        default_targets="TRANSFORMERS_MODELS_TO_FROD_TARGET_MODULES_MAPPING",
    )
)

SHARED_KEYS = ("frod_V", "frod_s_indices", "frod_s_size")


@pytest.mark.parametrize("case", ["llama_q_v_down", "gpt2_conv1d", "bert_seq_cls_no_sparse"])
def test_seeded_adapter_and_shared_tensors_are_bit_identical_to_peft_s(case):
    """Same key and seed: the same bases V, sparse positions, lambda, U and (init_weights=False) random S."""
    case = CASES[case]
    base = case.model_fn()
    built = []
    for lib in (peft, peftkit):
        torch.manual_seed(3)
        config = getattr(lib, METHOD)(task_type=case.task_type, **{**case.config, "init_weights": False})
        built.append(lib.get_peft_model(copy.deepcopy(base), config))
    theirs, ours = (model.state_dict() for model in built)
    assert sorted(ours) == sorted(theirs)
    assert [
        k for k in theirs if theirs[k].dtype != ours[k].dtype or not torch.equal(theirs[k], ours[k])
    ] == []
    assert any(k.startswith("base_model.frod_V.") for k in ours)
    their_layers = [m for m in built[0].modules() if hasattr(m, "frod_U")]
    our_layers = [m for m in built[1].modules() if hasattr(m, "frod_U")]
    assert all(
        torch.equal(o.frod_U["default"], t.frod_U["default"]) for o, t in zip(our_layers, their_layers)
    )


def test_file_holds_the_shared_tensors_only_with_save_projection(tmp_path):
    base = tiny_llama()
    for save in (True, False):
        model = peftkit.get_peft_model(copy.deepcopy(base), peftkit.FrodConfig(**QVD, save_projection=save))
        model.save_pretrained(tmp_path / str(save))
        keys = set(load_file(tmp_path / str(save) / "adapter_model.safetensors"))
        shared = {k for k in keys if k.startswith(tuple(f"base_model.{n}." for n in SHARED_KEYS))}
        roles = ("self_attn_q_proj", "self_attn_v_proj", "mlp_down_proj")
        assert shared == ({f"base_model.{n}.{r}" for n in SHARED_KEYS for r in roles} if save else set())
        assert not any(".frod_U" in k for k in keys)  # U is rebuilt, never saved


def test_u_follows_a_basis_loaded_from_a_file(tmp_path):
    """A file whose bases differ from what this machine computes (e.g. eigenvector signs from another LAPACK)
    gives the saved outputs: U is rebuilt from the loaded V (peft keeps the U of the V it computed)."""
    base = tiny_llama()
    model = checks.peftkit_model(METHOD, CASES["llama_q_v_down"], base)
    model.save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(path)
    for key in [k for k in tensors if k.startswith("base_model.frod_V.")]:
        tensors[key] = -tensors[key]  # the same basis directions, reversed (S's entries keep their meaning)
    save_file(tensors, path, metadata={"format": "pt"})
    loaded = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    layer = loaded.base_model.model.model.layers[0].self_attn.q_proj
    assert not torch.equal(layer.frod_V["default"], model.base_model.frod_V["self_attn_q_proj"]["default"])
    inputs = llama_inputs()
    with torch.no_grad():
        checks.assert_close(
            loaded(**inputs).logits, model(**inputs).logits, checks.ROUNDTRIP_ATOL, "flipped basis"
        )


def test_one_adapter_skips_the_base_layer_and_dropout_uses_it():
    model = peftkit.get_peft_model(
        tiny_llama(), peftkit.FrodConfig(**QVD, frod_dropout=0.5, init_weights=False)
    )
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    calls = []
    layer.base_layer.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(2, 3, 32)
    layer.eval()
    with torch.no_grad():
        fast = layer(x)
    assert calls == []  # eval: the factors alone
    expected = x @ layer.adapted_weight("default").T
    torch.testing.assert_close(fast, expected, atol=1e-5, rtol=0)
    layer.train()
    torch.manual_seed(0)
    with torch.no_grad():
        dropped_out = layer(x)
    assert calls == [1]
    torch.manual_seed(0)
    dropped = layer.frod_dropout["default"](x)
    expected = x @ layer.weight.T + dropped @ (layer.adapted_weight("default") - layer.weight).T
    torch.testing.assert_close(dropped_out, expected, atol=1e-5, rtol=0)


def test_runtime_offload_moves_the_base_weight_only_where_it_is_needed(monkeypatch):
    """The base weight goes to the CPU where only the factors are used and to the input's device where the
    base layer runs (on a CPU-only machine both are the CPU: the decisions are checked, and the moves)."""
    from peftkit.tuners.frod.layer import FrodLayer

    model = peftkit.get_peft_model(tiny_llama(), peftkit.FrodConfig(**QVD, runtime_offload_base_weight=True))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    placed = []
    monkeypatch.setattr(FrodLayer, "_place_base_weight", lambda self, device: placed.append(device))
    x = torch.randn(2, 32)
    with torch.no_grad():
        assert not layer.base_layer_runs()  # one adapter, no dropout: the factors alone
        layer(x)
        assert layer.base_layer_runs(["default", "default"])  # a mixed batch adds to the base output
        with model.disable_adapter():
            assert layer.base_layer_runs()
        model.merge_adapter()
        assert layer.base_layer_runs()
        layer(x)
    assert placed[:1] == [torch.device("cpu")] and placed[-1] == x.device
    model.unmerge_adapter()
    model.add_adapter("other", peftkit.FrodConfig(**QVD, runtime_offload_base_weight=True))
    model.base_model.set_adapter(["default", "other"])
    assert layer.base_layer_runs()  # two adapters: base output plus both changes
    with pytest.raises(ValueError, match="runtime_offload_base_weight must be the same"):
        model.add_adapter("third", peftkit.FrodConfig(**QVD))


def test_merging_two_adapters_and_unmerging_restores_the_weight_exactly():
    base = tiny_llama()
    model = peftkit.get_peft_model(copy.deepcopy(base), peftkit.FrodConfig(**QVD))
    model.add_adapter(
        "second", peftkit.FrodConfig(**{**QVD, "target_modules": ["q_proj"], "sparse_rate": 0.1})
    )
    model.base_model.set_adapter(["default", "second"])
    perturb_adapter_weights(model)
    inputs = llama_inputs()
    with torch.no_grad():
        both = model(**inputs).logits  # base + (W1' - W) + (W2' - W)
        model.merge_adapter()
        checks.assert_close(model(**inputs).logits, both, checks.MERGE_ATOL, "both merged")
        model.unmerge_adapter()
    weight = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert torch.equal(weight, base.model.layers[0].self_attn.q_proj.weight)


def test_second_adapter_with_other_targets_moves_both_ways(tmp_path):
    base = tiny_llama()
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.FrodConfig(**QVD))
    second = {"target_modules": ["o_proj", "q_proj"], "sparse_rate": 0.1, "progressbar": False}
    ours.add_adapter("second", peftkit.FrodConfig(**second))
    assert (
        "self_attn_o_proj" in ours.base_model.frod_V
        and "second" in ours.base_model.frod_V["self_attn_q_proj"]
    )
    ours.base_model.set_adapter(["default", "second"])
    perturb_adapter_weights(ours)
    ours.set_adapter("second")
    ours.eval().save_pretrained(tmp_path)
    inputs = llama_inputs()
    for loader in (peft.PeftModel, peftkit.PeftModel):
        loaded = loader.from_pretrained(
            copy.deepcopy(base), tmp_path / "second", adapter_name="second"
        ).eval()
        with torch.no_grad():
            checks.assert_close(
                loaded(**inputs).logits, ours(**inputs).logits, checks.ROUNDTRIP_ATOL, str(loader)
            )
    ours.delete_adapter("second")
    assert "self_attn_o_proj" not in ours.base_model.frod_V  # no adapter uses that role any more


def test_adapters_share_key_and_save_projection():
    model = peftkit.get_peft_model(tiny_llama(), peftkit.FrodConfig(**QVD))
    with pytest.raises(ValueError, match="initialization key must be the same"):
        model.add_adapter("other", peftkit.FrodConfig(**QVD, projection_prng_key=1))
    with pytest.raises(ValueError, match="save_projection must be the same"):
        model.add_adapter("other", peftkit.FrodConfig(**QVD, save_projection=False))
    assert list(model.peft_config) == ["default"]


def test_a_role_with_different_input_sizes_is_a_clear_error():
    class Blocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(
                [nn.ModuleDict({"proj": nn.Linear(8, 4)}), nn.ModuleDict({"proj": nn.Linear(6, 4)})]
            )

    with pytest.raises(ValueError, match="role 'proj'.*different input sizes \\[6, 8\\]"):
        peftkit.get_peft_model(Blocks(), peftkit.FrodConfig(target_modules=["proj"], progressbar=False))


def test_only_linear_layers():
    with pytest.raises(ValueError, match="No layer types compatible with FRoD"):
        peftkit.get_peft_model(conv_net(), peftkit.FrodConfig(target_modules=["conv2d"], progressbar=False))
    with pytest.raises(TypeError, match="not supported by FrodModel"):
        peftkit.get_peft_model(
            conv_net(), peftkit.FrodConfig(target_modules=["lin", "conv2d"], progressbar=False)
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sparse_rate": 1.5}, "sparse_rate"),
        ({"frod_dropout": 1.0}, "frod_dropout"),
        ({"bias": "lora_only"}, "bias must be one of"),
        ({"layers_pattern": "layers"}, "layers_to_transform` must also be specified"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        peftkit.FrodConfig(**kwargs)


def test_roles_and_block_indices_as_peft_names_them():
    from peft.tuners.frod.model import _category_from_key, _layer_index_from_key

    keys = [
        "model.layers.3.self_attn.q_proj",
        "transformer.h.2.attn.c_attn",
        "bert.encoder.layer.1.attention.output.dense",
        "bert.encoder.layer.1.output.dense",
        "classifier",
        "blocks.4.fc",
        "model.layers.x.proj",
    ]
    assert [category_of(k) for k in keys] == [_category_from_key(k) for k in keys]
    assert [layer_index_of(k, 9) for k in keys] == [_layer_index_from_key(k, 9) for k in keys]
