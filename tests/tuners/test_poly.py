"""Poly against peft: the routed skill bank gives the same logits, gradients and generations per task,
files move both ways, same names and init draws; task_ids reach the layers from every entry point
(task classes, plain PeftModel, generate, the layer itself); merging is a clear error."""

import copy

import peft
import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_gpt2, tiny_llama, tiny_t5
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case

import peftkit

METHOD = "PolyConfig"
QV = {"r": 2, "n_tasks": 3, "n_skills": 2, "target_modules": ["q_proj", "v_proj"]}
GRAD_ATOL = 1e-5  # gradients of the same loss on the same weights (fp32)


def task_inputs(task_ids=(0, 2)) -> dict:
    return {**llama_inputs(), "task_ids": torch.tensor(task_ids)}


def t5_inputs() -> dict:
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 128, (2, 6), generator=gen)
    return {"input_ids": ids, "decoder_input_ids": ids[:, :4], "task_ids": torch.tensor([1, 0])}


CASES = {
    "llama_q_v": Case(tiny_llama, QV, task_inputs, task_type="CAUSAL_LM"),
    "llama_multi_head_routing": Case(tiny_llama, {**QV, "n_splits": 4}, task_inputs, task_type="CAUSAL_LM"),
    "llama_b_drawn_all_linear": Case(
        tiny_llama,
        {**QV, "init_weights": False, "target_modules": "all-linear"},
        task_inputs,
        task_type="CAUSAL_LM",
    ),
    "t5_defaults_seq2seq": Case(
        tiny_t5, {"r": 2, "n_tasks": 2, "n_skills": 3, "n_splits": 2}, t5_inputs, task_type="SEQ_2_SEQ_LM"
    ),
}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v",
        merge=None,  # Poly does not merge (tested below)
        # in training the router samples its skill weights (relaxed Bernoulli): the loss still falls
        training_steps=8,
        training_lr=3e-2,
        mixed_batch="llama_multi_head_routing",  # each sample routed by its own task id
        truncated_file=checks.ONE,
        default_targets="TRANSFORMERS_MODELS_TO_POLY_TARGET_MODULES_MAPPING",
    )
)


def _pair(config: dict, model_fn=tiny_llama, task_type="CAUSAL_LM"):
    base = model_fn()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.PolyConfig(task_type=task_type, **config))
    perturb_adapter_weights(theirs)
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.PolyConfig(task_type=task_type, **config))
    ours.load_state_dict(theirs.state_dict())
    return base, theirs.eval(), ours.eval()


def test_gradients_equal_peft():
    _, theirs, ours = _pair({**QV, "n_splits": 2})
    grads = []
    for model in (theirs, ours):
        model(**task_inputs()).logits.square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 12  # A, B, router logits x 4 layers
    for name, expected in grads[0].items():
        checks.assert_close(grads[1][name], expected, GRAD_ATOL, name)


def test_each_task_routes_differently_and_task_ids_are_required():
    _, _, ours = _pair(QV)
    inputs = task_inputs((0, 0))
    with torch.no_grad():
        same = ours(**inputs).logits
        other = ours(**task_inputs((1, 1))).logits
    assert (same - other).abs().max() > 1e-4
    plain = {k: v for k, v in inputs.items() if k != "task_ids"}
    with pytest.raises(ValueError, match="task_ids should not be None.*one task index per sample"):
        ours(**plain)
    with pytest.raises(ValueError, match=r"Only 3 tasks available.*\[0, 3\].*n_tasks"):
        ours(**task_inputs((0, 3)))


def test_task_ids_reach_the_layers_from_every_entry_point():
    """The task classes (peft's way), a plain PeftModel (peft would pass task_ids to the base model and
    fail), and the layer's own `task_ids=` keyword (as peft's layer takes it) give the same output."""
    base, theirs, ours = _pair(QV)
    inputs = task_inputs((2, 1))
    plain = peftkit.PeftModel(copy.deepcopy(base), peftkit.PolyConfig(**QV)).eval()
    plain.load_state_dict(ours.state_dict())
    with torch.no_grad():
        expected = theirs(**inputs).logits
        checks.assert_close(ours(**inputs).logits, expected, 1e-6, "task class")
        checks.assert_close(plain(**inputs).logits, expected, 1e-6, "plain PeftModel")
        layer = ours.base_model.model.model.layers[0].self_attn.q_proj
        their_layer = theirs.base_model.model.model.layers[0].self_attn.q_proj
        x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
        checks.assert_close(
            layer(x, task_ids=inputs["task_ids"]), their_layer(x, task_ids=inputs["task_ids"]), 1e-6, "layer"
        )


def test_generate_equals_peft_and_beams_keep_each_sample_s_task():
    _, theirs, ours = _pair(QV)
    inputs = task_inputs((2, 1))
    kwargs = {"max_new_tokens": 4, "do_sample": False}
    assert torch.equal(ours.generate(**inputs, **kwargs), theirs.generate(**inputs, **kwargs))
    # beam search repeats every sample; each copy keeps its sample's task id (peft's router would see
    # fewer task ids than samples): beams for the batch equal beams for each sample alone
    beams = ours.generate(**inputs, num_beams=2, **kwargs)
    for row in range(2):
        alone = {k: v[row : row + 1] for k, v in inputs.items()}
        assert torch.equal(beams[row : row + 1], ours.generate(**alone, num_beams=2, **kwargs)), row


def test_router_samples_in_training_and_is_deterministic_in_eval():
    _, _, ours = _pair(QV)
    inputs = task_inputs()
    with torch.no_grad():
        ours.train()
        first, second = ours(**inputs).logits, ours(**inputs).logits
        assert (first - second).abs().max() > 1e-6
        ours.eval()
        assert torch.equal(ours(**inputs).logits, ours(**inputs).logits)


def test_merge_is_a_clear_error_and_unload_and_disable_give_the_base():
    base, _, ours = _pair(QV)
    inputs = task_inputs()
    plain = {k: v for k, v in inputs.items() if k != "task_ids"}
    with torch.no_grad():
        base_out = base(**plain).logits
        with ours.disable_adapter():
            checks.assert_close(ours(**inputs).logits, base_out, checks.BASE_ATOL, "disabled")
        for merge in (ours.merge_adapter, ours.merge_and_unload):
            with pytest.raises(ValueError, match="Poly adapters cannot be merged.*unload"):
                merge()
        assert not any(layer.merged for layer in ours.base_model._tuner_layers(ours.base_model.model))
        checks.assert_close(ours.unload()(**plain).logits, base_out, checks.BASE_ATOL, "unload")


def test_several_adapters_set_and_delete():
    _, _, ours = _pair(QV)
    inputs = task_inputs()
    ours.add_adapter("other", peftkit.PolyConfig(task_type="CAUSAL_LM", **{**QV, "n_tasks": 4}))
    perturb_adapter_weights(ours, seed=1)
    with torch.no_grad():
        default = ours(**inputs).logits
        ours.set_adapter("other")
        other = ours(**task_inputs((3, 3))).logits
        assert (default - ours(**inputs).logits).abs().max() > 1e-4
        ours.delete_adapter("other")
        assert ours.active_adapters == ["default"] and "other" not in ours.peft_config
        checks.assert_close(ours(**inputs).logits, default, 0.0, "after deleting the other adapter")
    assert other.shape == default.shape


@pytest.mark.parametrize("init_weights", [True, False])
def test_initial_weights_equal_peft_under_the_same_seed(init_weights):
    """Same draws in the same order as peft (skill by skill, split by split, then the router)."""
    config = {**QV, "n_splits": 2, "init_weights": init_weights}
    base = tiny_llama()
    torch.manual_seed(5)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.PolyConfig(**config))
    torch.manual_seed(5)
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.PolyConfig(**config))
    expected = {k: v for k, v in theirs.state_dict().items() if "poly_" in k}
    actual = {k: v for k, v in ours.state_dict().items() if "poly_" in k}
    assert actual.keys() == expected.keys() and len(actual) == 12
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


def test_bad_configs_and_layers_are_clear_errors():
    with pytest.raises(ValueError, match="n_skills must be a positive integer"):
        peftkit.PolyConfig(n_skills=0)
    with pytest.raises(ValueError, match="poly_type must be one of"):
        peftkit.PolyConfig(poly_type="mhr")
    with pytest.raises(ValueError, match="n_splits=3 must divide the input size"):
        peftkit.get_peft_model(tiny_llama(), peftkit.PolyConfig(n_splits=3, target_modules=["q_proj"]))
    with pytest.raises(TypeError, match="not supported by PolyModel.*torch.nn.Linear"):
        peftkit.get_peft_model(tiny_gpt2(), peftkit.PolyConfig(target_modules=["c_attn"]))
