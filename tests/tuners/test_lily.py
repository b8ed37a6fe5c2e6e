"""Lily against peft: files move both ways with the same logits, the same names and the same sharing of A
and B across layers, seeded init bit-identical, no merge (a clear error), mixed batches routed per adapter."""

import copy

import peft
import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_bert, tiny_gpt2, tiny_llama
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case

import peftkit

METHOD = "LilyConfig"
QVD = {"r": 4, "target_modules": ["q_proj", "v_proj", "down_proj"], "stride_A": 3, "num_B": 3}


def llama4():
    return tiny_llama(num_hidden_layers=4)


CASES = {
    "llama4_q_v_down_stride3": Case(llama4, QVD),
    "llama_defaults": Case(tiny_llama, {"r": 4}, task_type="CAUSAL_LM"),
    "llama4_regex_random_init": Case(
        llama4, {"r": 2, "target_modules": r".*\.(k_proj|up_proj)", "scaling": 0.5, "init_weights": False}
    ),
    "llama4_layers_exclude": Case(
        llama4,
        {
            "r": 3,
            "target_modules": ["q_proj", "o_proj"],
            "exclude_modules": ["layers.2.self_attn.q_proj"],
            "layers_to_transform": [1, 2, 3],
            "stride_A": 2,
        },
    ),
    "bert_seq_cls": Case(
        tiny_bert, {"r": 4, "target_modules": ["query", "value"], "stride_A": 2}, task_type="SEQ_CLS"
    ),
}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama4_q_v_down_stride3",
        merge=None,  # Lily does not merge (tested below)
        mixed_batch=None,  # adapters share factors across layers (tested below)
        default_targets="TRANSFORMERS_MODELS_TO_LILY_TARGET_MODULES_MAPPING",
    )
)


def _sharing_pattern(model) -> list[tuple[str, str, str]]:
    """Which (layer, factor) pairs hold the same module: the sharing structure, comparable across libraries."""
    layers = [(n, m) for n, m in model.named_modules() if hasattr(m, "lily_A")]
    pairs = []
    for factor in ("lily_A", "lily_B", "lily_router"):
        for i, (name, layer) in enumerate(layers):
            for other_name, other in layers[i + 1 :]:
                if getattr(layer, factor)["default"] is getattr(other, factor)["default"]:
                    pairs.append((factor, name, other_name))
    return pairs


@pytest.mark.parametrize("case", ["llama4_q_v_down_stride3", "llama4_layers_exclude", "bert_seq_cls"])
def test_seeded_init_and_sharing_equal_peft_s(case):
    """Same seed, same adapter bit for bit (peft's creation order and RNG use) and the same layers share A and B."""
    case = CASES[case]
    base = case.model_fn()
    built = []
    for lib in (peft, peftkit):
        torch.manual_seed(11)
        config = getattr(lib, METHOD)(task_type=case.task_type, **{**case.config, "init_weights": False})
        built.append(lib.get_peft_model(copy.deepcopy(base), config))
    theirs, ours = built
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    assert _sharing_pattern(ours) == _sharing_pattern(theirs)
    assert {f for f, _, _ in _sharing_pattern(ours)} == {"lily_A", "lily_B"}  # routers are never shared


def test_sharing_groups_by_target_and_shape_with_a_stride():
    model = peftkit.get_peft_model(llama4(), peftkit.LilyConfig(**QVD))
    layers = model.base_model.model.model.layers
    q = [layer.self_attn.q_proj for layer in layers]
    assert [q[i].lily_A["default"] is q[0].lily_A["default"] for i in range(4)] == [True, True, True, False]
    assert all(layer.lily_B["default"] is q[0].lily_B["default"] for layer in q)
    assert len({id(layer.lily_router["default"]) for layer in q}) == 4  # routers are per layer
    v = layers[0].self_attn.v_proj  # another target (and shape): its own factors
    assert v.lily_B["default"] is not q[0].lily_B["default"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == model.get_nb_trainable_parameters()[0]  # shared tensors counted once


def test_shared_factors_stay_shared_through_training_and_loading(tmp_path):
    base = llama4()
    model = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LilyConfig(**QVD, init_weights=False))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**llama_inputs()).logits.square().mean().backward()
    optimizer.step()
    model.save_pretrained(tmp_path)
    for low_cpu_mem_usage in (False, True):
        loaded = peftkit.PeftModel.from_pretrained(
            copy.deepcopy(base), tmp_path, low_cpu_mem_usage=low_cpu_mem_usage
        )
        assert _sharing_pattern(loaded) == _sharing_pattern(model)
        with torch.no_grad():
            checks.assert_close(
                loaded(**llama_inputs()).logits,
                model(**llama_inputs()).logits,
                0.0,
                "reloaded trained adapter",
            )


def test_merging_is_a_clear_error_and_unload_disable_work():
    case = CASES["llama4_q_v_down_stride3"]
    base = case.model_fn()
    model = checks.peftkit_model(METHOD, case, base)
    inputs = llama_inputs()
    with torch.no_grad():
        base_out = base(**inputs).logits
        assert (model(**inputs).logits - base_out).abs().max() > 1e-3
        with model.disable_adapter():
            checks.assert_close(model(**inputs).logits, base_out, checks.BASE_ATOL, "disable_adapter")
        for merge in (model.merge_adapter, model.merge_and_unload):
            with pytest.raises(NotImplementedError, match="Lily cannot be merged"):
                merge()
        checks.assert_close(model.unload()(**inputs).logits, base_out, checks.BASE_ATOL, "unload")


def test_mixed_batch_routes_each_adapter_over_its_own_samples():
    """Lily's routing averages over the batch, so in a mixed batch each adapter's samples get what they would
    get as a batch of their own (and `__base__` samples the base output)."""
    model = peftkit.get_peft_model(llama4(), peftkit.LilyConfig(**QVD))
    model.add_adapter("second", peftkit.LilyConfig(**QVD))
    model.base_model.set_adapter(["default", "second"])
    perturb_adapter_weights(model, scale=0.5)
    model.eval()
    inputs = llama_inputs(batch=4)
    names = ["second", "default", "__base__", "second"]
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=names).logits
        for adapter, rows in (("second", [0, 3]), ("default", [1])):
            model.set_adapter(adapter)
            alone = model(**{k: v[rows] for k, v in inputs.items()}).logits
            checks.assert_close(mixed[rows], alone, checks.BASE_ATOL, adapter)
        with model.disable_adapter():
            checks.assert_close(mixed[2], model(**inputs).logits[2], checks.BASE_ATOL, "__base__")


def test_second_adapter_shares_its_factors_and_moves_both_ways(tmp_path):
    """peft shares A and B only for the adapter a model is created with; peftkit shares them for every adapter,
    and its files (per-layer copies of the shared tensors, as peft writes them) load in peft unchanged."""
    base = llama4()
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LilyConfig(**QVD))
    ours.add_adapter("second", peftkit.LilyConfig(**{**QVD, "r": 2, "stride_A": 2}))
    q = [layer.self_attn.q_proj for layer in ours.base_model.model.model.layers]
    assert (
        q[1].lily_A["second"] is q[0].lily_A["second"] and q[2].lily_A["second"] is not q[0].lily_A["second"]
    )
    assert q[3].lily_B["second"] is q[0].lily_B["second"]
    ours.base_model.set_adapter(["default", "second"])
    perturb_adapter_weights(ours)
    ours.set_adapter("second")
    ours.eval().save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    theirs.load_adapter(tmp_path / "second", adapter_name="second")
    theirs.set_adapter("second")
    with torch.no_grad():
        checks.assert_close(
            theirs(**llama_inputs()).logits, ours(**llama_inputs()).logits, checks.ROUNDTRIP_ATOL, "second"
        )


def test_only_linear_layers():
    with pytest.raises(TypeError, match="not supported by LilyModel"):
        peftkit.get_peft_model(tiny_gpt2(), peftkit.LilyConfig(r=2, target_modules=["c_attn"]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"r": 0}, "positive integer"),
        ({"stride_A": 0}, "stride_A"),
        ({"num_B": 1}, "num_B"),
        ({"layers_pattern": "layers"}, "layers_to_transform` must also be specified"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        peftkit.LilyConfig(**kwargs)
