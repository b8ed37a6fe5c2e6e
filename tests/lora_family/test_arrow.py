"""Arrow (`arrow_config`, `create_arrow_model`) and GenKnowSub: the same routing, outputs and subtracted
experts as peft; experts added or deleted later are routed among; merging is refused."""

import copy
import dataclasses
import json

import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_llama
from tests.lora_family.helpers import max_diff

import peftkit
from peftkit.tuners.lora.arrow import ArrowLoraLinearLayer

ATOL = 1e-5


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """The base model and five saved LoRA adapters on q_proj and v_proj (rank 4, other alphas)."""
    import peft

    base = tiny_llama()
    folder = tmp_path_factory.mktemp("arrow")
    paths = []
    for i in range(5):
        model = peft.get_peft_model(
            copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8 + i, target_modules=["q_proj", "v_proj"])
        )
        perturb_adapter_weights(model, seed=i)
        model.save_pretrained(folder / f"adapter_{i}")
        paths.append(str(folder / f"adapter_{i}"))
    return base, paths


def _both(base, tasks, general=None, **arrow):
    import peft

    return [
        lib.create_arrow_model(
            copy.deepcopy(base),
            tasks,
            lib.ArrowConfig(**{"top_k": 2, "rng_seed": 7, **arrow}),
            general_adapter_paths=general,
        )
        for lib in (peft, peftkit)
    ]


def test_config_fields_defaults_and_json_round_trip():
    from peft.tuners.lora.config import ArrowConfig as Theirs

    def fields(cls):
        return {f.name: (f.default, f.init) for f in dataclasses.fields(cls)}

    assert fields(peftkit.ArrowConfig) == fields(Theirs)
    for bad in ({"top_k": 0}, {"router_temperature": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            peftkit.ArrowConfig(**bad)
    arrow = peftkit.ArrowConfig(top_k=2)
    arrow.task_adapter_names = ["task_0", "task_1"]
    written = json.loads(json.dumps(peftkit.LoraConfig(arrow_config=arrow).to_json_dict()))
    assert written["arrow_config"]["task_adapter_names"] == ["task_0", "task_1"]  # written, as peft writes it
    read = peftkit.LoraConfig(**{k: v for k, v in written.items() if k != "peft_type"})
    assert read.arrow_config == peftkit.ArrowConfig(top_k=2)  # and not a constructor argument when read


@pytest.mark.parametrize("use_gks", [False, True])
def test_routing_outputs_and_general_knowledge_subtraction_equal_peft(adapters, use_gks):
    base, paths = adapters
    inputs = llama_inputs()
    theirs, ours = _both(base, paths[:3], paths[3:] if use_gks else None, use_gks=use_gks)
    assert ours.active_adapters == ["arrow_router"] and sorted(ours.peft_config) == sorted(theirs.peft_config)
    expected = theirs(**inputs).logits
    assert max_diff(ours(**inputs).logits, expected) < ATOL
    assert max_diff(expected, base(**inputs).logits) > 1e-2
    # after the first forward: GenKnowSub has changed the task adapters (the router's own factors are unused)
    their_state = theirs.state_dict()
    experts = {k: v for k, v in ours.state_dict().items() if "arrow_router" not in k}
    assert max(max_diff(v, their_state[k]) for k, v in experts.items()) < ATOL
    q_proj = ours.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.lora_arrow["arrow_router"].gks_done is use_gks


def test_prototypes_are_the_experts_top_right_singular_vectors(adapters):
    base, paths = adapters
    _, ours = _both(base, paths[:3])
    ours(**llama_inputs())
    layer = ours.base_model.model.model.layers[1].self_attn.v_proj
    router = layer.lora_arrow["arrow_router"]
    for name, prototype in zip(router.task_adapter_names, router.prototypes):
        delta = layer.lora_B[name].weight @ layer.lora_A[name].weight
        top = torch.linalg.svd(delta)[2][0]
        # 15 power-iteration steps (as peft): close to the singular vector, not equal to it
        assert min(max_diff(prototype, top), max_diff(prototype, -top)) < 1e-2


def test_experts_added_or_deleted_later_are_routed_among(adapters):
    base, paths = adapters
    inputs = llama_inputs()
    theirs, ours = _both(base, paths[:2], paths[3:], use_gks=True)
    for model in (theirs, ours):
        model(**inputs)  # GenKnowSub on the first two experts
        model.load_adapter(
            paths[2], adapter_name="task_2"
        )  # then a third expert, subtracted at its first routing
    assert max_diff(ours(**inputs).logits, theirs(**inputs).logits) < ATOL
    router = ours.base_model.model.model.layers[0].self_attn.q_proj.lora_arrow["arrow_router"]
    assert router.task_adapter_names == ["task_0", "task_1", "task_2"]
    _, fresh = _both(base, [paths[0], paths[2]])
    _, pruned = _both(base, paths[:3])
    pruned.delete_adapter("task_1")  # peft 0.21 keeps routing to the deleted expert (and fails)
    assert max_diff(pruned(**inputs).logits, fresh(**inputs).logits) < ATOL


def test_clear_errors(adapters):
    base, paths = adapters
    _, ours = _both(base, paths[:2])
    with pytest.raises(NotImplementedError, match="Arrow does not support merging"):
        ours.merge_adapter()
    ours.set_adapter("task_0")
    ours.merge_adapter()  # a task adapter still merges
    arrow = peftkit.ArrowConfig(top_k=3)
    with pytest.raises(ValueError, match="top_k=3 is larger than the number of task adapters"):
        peftkit.create_arrow_model(copy.deepcopy(base), paths[:2], arrow)
    with pytest.raises(ValueError, match="general LoRA paths"):
        peftkit.create_arrow_model(copy.deepcopy(base), paths[:2], peftkit.ArrowConfig(top_k=1, use_gks=True))
    with pytest.raises(ValueError, match="at least one adapter path"):
        peftkit.create_arrow_model(copy.deepcopy(base), [], peftkit.ArrowConfig())
    model = peftkit.get_peft_model(
        copy.deepcopy(base), peftkit.LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    )
    model.save_pretrained(paths[0] + "_rank2")
    with pytest.raises(ValueError, match="rank mismatch"):
        peftkit.create_arrow_model(
            copy.deepcopy(base), [paths[0], paths[0] + "_rank2"], peftkit.ArrowConfig(top_k=1)
        )
    router = ArrowLoraLinearLayer(32, peftkit.ArrowConfig(top_k=2))
    router.on_adapter_change(["task_0"])
    with pytest.raises(ValueError, match="top_k=2 task adapters, but this layer has 1"):
        router.build_prototypes({}, {})
    embedding = peftkit.get_peft_model(
        copy.deepcopy(base), peftkit.LoraConfig(target_modules=["embed_tokens"])
    )
    embedding.save_pretrained(paths[0] + "_embedding")
    with pytest.raises(TypeError, match="Linear-like layers"):
        peftkit.create_arrow_model(
            copy.deepcopy(base), [paths[0] + "_embedding"], peftkit.ArrowConfig(top_k=1)
        )
