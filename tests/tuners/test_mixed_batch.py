"""forward/generate with `adapter_names=`: each sample uses its own adapter (batched gather path)."""

import copy

import pytest
import torch
from tests.conftest import conv_net, llama_inputs, perturb_adapter_weights, tiny_llama, tiny_llama_seq_cls

import peftkit

ADAPTERS = {
    "one": {"target_modules": ["q_proj", "v_proj"], "r": 4},
    "two": {"target_modules": ["q_proj", "o_proj", "down_proj"], "r": 8, "lora_alpha": 16},
    "three": {"target_modules": "all-linear", "r": 2, "use_rslora": True},
    "four": {"target_modules": ["v_proj", "embed_tokens"], "use_dora": True},
}


def _build(lib, base, adapters, task_type=None):
    names = list(adapters)
    model = lib.get_peft_model(
        copy.deepcopy(base), lib.LoraConfig(task_type=task_type, **adapters[names[0]]), adapter_name=names[0]
    )
    for name in names[1:]:
        model.add_adapter(name, lib.LoraConfig(task_type=task_type, **adapters[name]))
    return model


@pytest.fixture(scope="module")
def pair():
    import peft

    base = tiny_llama()
    theirs = _build(peft, base, ADAPTERS, task_type="CAUSAL_LM")
    ours = _build(peftkit, base, ADAPTERS, task_type="CAUSAL_LM")
    for i, name in enumerate(ADAPTERS):
        theirs.set_adapter(name)
        perturb_adapter_weights(theirs, seed=i)
    theirs.set_adapter("one")
    ours.load_state_dict(theirs.state_dict())
    return base, theirs.eval(), ours.eval()


NAMES = ["one", "__base__", "two", "three", "one", "four", "two", "__base__"]


@torch.no_grad()
def test_mixed_batch_equals_per_sample_and_peft(pair):
    _, theirs, ours = pair
    inputs = llama_inputs(batch=len(NAMES), length=6)
    mixed = ours(**inputs, adapter_names=NAMES).logits
    for i, name in enumerate(NAMES):
        row = {k: v[i : i + 1] for k, v in inputs.items()}
        if name == "__base__":
            with ours.disable_adapter():
                single = ours(**row).logits
        else:
            ours.set_adapter(name)
            single = ours(**row).logits
        torch.testing.assert_close(mixed[i : i + 1], single, atol=1e-5, rtol=0)
    ours.set_adapter("one")
    expected = theirs(
        **inputs, adapter_names=[n for n in NAMES if n != "four"] + ["one"]
    ).logits  # peft refuses DoRA here
    actual = ours(**inputs, adapter_names=[n for n in NAMES if n != "four"] + ["one"]).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_mixed_batch_generate_greedy_beam_and_sampling(pair):
    _, theirs, ours = pair
    inputs = llama_inputs(batch=3, length=5)
    names = ["two", "__base__", "three"]
    greedy = ours.generate(**inputs, adapter_names=names, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(
        greedy,
        theirs.generate(**inputs, adapter_names=names, max_new_tokens=4, do_sample=False, pad_token_id=0),
    )
    beams = ours.generate(
        **inputs, adapter_names=names, max_new_tokens=4, num_beams=2, do_sample=False, pad_token_id=0
    )
    assert torch.equal(
        beams,
        theirs.generate(
            **inputs, adapter_names=names, max_new_tokens=4, num_beams=2, do_sample=False, pad_token_id=0
        ),
    )
    for i, name in enumerate(names):  # each row equals generating with that adapter alone
        row = {k: v[i : i + 1] for k, v in inputs.items()}
        ours.set_adapter(name if name != "__base__" else "one")
        if name == "__base__":
            with ours.disable_adapter():
                alone = ours.generate(**row, max_new_tokens=4, do_sample=False, pad_token_id=0)
        else:
            alone = ours.generate(**row, max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert torch.equal(greedy[i : i + 1], alone)
    ours.set_adapter("one")
    torch.manual_seed(0)
    sampled = ours.generate(
        **inputs,
        adapter_names=names,
        max_new_tokens=4,
        do_sample=True,
        num_return_sequences=2,
        pad_token_id=0,
    )
    assert sampled.shape == (6, 9)


@torch.no_grad()
def test_mixed_batch_generate_without_task_type_equals_peft():
    """A model made without `task_type` is a plain PeftModel: its generate honours adapter_names as peft's."""
    import peft

    base = tiny_llama()
    adapters = {k: ADAPTERS[k] for k in ("one", "two")}
    theirs, ours = _build(peft, base, adapters), _build(peftkit, base, adapters)
    for i, name in enumerate(adapters):
        theirs.set_adapter(name)
        perturb_adapter_weights(theirs, seed=i)
    ours.load_state_dict(theirs.state_dict())
    assert type(ours) is peftkit.PeftModel
    inputs = llama_inputs(batch=3, length=5)
    names = ["two", "__base__", "one"]
    greedy = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    got = ours.eval().generate(**inputs, adapter_names=names, **greedy)
    assert torch.equal(got, theirs.eval().generate(**inputs, adapter_names=names, **greedy))
    ours.set_adapter("two")
    assert torch.equal(got[:1], ours.generate(**{k: v[:1] for k, v in inputs.items()}, **greedy))
    assert not torch.equal(got[:1], base.generate(**{k: v[:1] for k, v in inputs.items()}, **greedy))


@torch.no_grad()
def test_mixed_batch_every_layer_kind():
    base = conv_net()
    targets = ["conv1d", "conv2d", "conv2d_1x1", "conv3d", "emb", "lin"]
    model = peftkit.get_peft_model(
        copy.deepcopy(base), peftkit.LoraConfig(target_modules=targets), adapter_name="x"
    )
    model.add_adapter("y", peftkit.LoraConfig(target_modules=targets, r=2, use_dora=False))
    for name in ("x", "y"):
        model.set_adapter(name)
        perturb_adapter_weights(model, seed=ord(name))
    model.eval()
    ids = torch.randint(0, 20, (3, 8), generator=torch.Generator().manual_seed(0))
    names = ["y", "__base__", "x"]
    mixed = model(ids, adapter_names=names)
    for i, name in enumerate(names):
        if name == "__base__":
            expected = base(ids[i : i + 1])
        else:
            model.set_adapter(name)
            expected = model(ids[i : i + 1])
        torch.testing.assert_close(mixed[i : i + 1], expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_mixed_batch_with_modules_to_save_head():
    base = tiny_llama_seq_cls()
    model = peftkit.get_peft_model(
        copy.deepcopy(base),
        peftkit.LoraConfig(target_modules=["q_proj"], task_type="SEQ_CLS"),
        adapter_name="p",
    )
    model.add_adapter("q", peftkit.LoraConfig(target_modules=["v_proj"], task_type="SEQ_CLS"))
    for name in ("p", "q"):
        model.set_adapter(name)
        perturb_adapter_weights(model, seed=ord(name))
    model.eval()
    inputs = llama_inputs(batch=2)
    mixed = model(**inputs, adapter_names=["q", "p"]).logits
    model.set_adapter("q")
    torch.testing.assert_close(
        mixed[:1], model(**{k: v[:1] for k, v in inputs.items()}).logits, atol=1e-5, rtol=0
    )


def test_mixed_batch_errors(pair):
    _, _, ours = pair
    inputs = llama_inputs(batch=2)
    with pytest.raises(ValueError, match="nope"):
        ours(**inputs, adapter_names=["one", "nope"])
    with pytest.raises(ValueError, match="batch size"):
        ours(**inputs, adapter_names=["one"])
    ours.merge_adapter()
    try:
        with pytest.raises(ValueError, match="merged"):
            ours(**inputs, adapter_names=["one", "two"])
    finally:
        ours.unmerge_adapter()
    ours.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            ours(**inputs, adapter_names=["one", "two"])
    finally:
        ours.eval()


@torch.no_grad()
def test_stacked_factor_cache_follows_weight_updates(pair):
    _, _, ours = pair
    inputs = llama_inputs(batch=2)
    before = ours(**inputs, adapter_names=["one", "two"]).logits
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    layer.lora_B["one"].weight.add_(0.5)
    after = ours(**inputs, adapter_names=["one", "two"]).logits
    ours.set_adapter("one")
    single = ours(**{k: v[:1] for k, v in inputs.items()}).logits
    layer.lora_B["one"].weight.sub_(0.5)
    assert not torch.allclose(before[:1], after[:1], atol=1e-4)
    torch.testing.assert_close(after[:1], single, atol=1e-5, rtol=0)
