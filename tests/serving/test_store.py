"""The adapter store: adapters registered by name, loaded on first use, least recently used unloaded."""

import copy

import pytest
import torch
from tests.conftest import llama_inputs

import peftkit
from peftkit.serving import AdapterStore, AdapterStoreError

from .helpers import save_random_adapters, tiny_base


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    base = tiny_base()
    return base, root, save_random_adapters(base, root, 6)


def _store(base, root, names, **bounds):
    model = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), root / names[0], adapter_name=names[0])
    store = AdapterStore(model, **bounds)
    store.register(names[0], root / names[0], adopt=True)
    assert store.register_folder(root) == names
    return model, store


def _alone(base, root, name, inputs):
    """The logits of adapter `name` loaded on its own (the reference)."""
    model = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), root / name).eval()
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "load_adapter"])
@torch.no_grad()
def test_registered_adapters_load_on_first_use_and_match_each_adapter_alone(adapters, fast):
    base, root, names = adapters
    model, store = _store(base, root, names, max_adapters=3)
    store.fast_loading = fast
    assert store.resident == ["a0"] and len(store) == 6
    batch = ["a3", "a1", "__base__", "a3"]
    inputs = llama_inputs(batch=len(batch), length=5)
    logits = model(**inputs, adapter_names=batch).logits
    assert set(store.resident) == {"a1", "a3", "a0"}  # a0 was least recently used but still fits
    for row, name in enumerate(batch):
        single = {k: v[row : row + 1] for k, v in inputs.items()}
        if name == "__base__":
            expected = base(**single).logits
        else:
            expected = _alone(base, root, name, single)
        torch.testing.assert_close(logits[row : row + 1], expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_least_recently_used_adapters_leave_first_and_generate_still_matches(adapters):
    base, root, names = adapters
    model, store = _store(base, root, names, max_adapters=2)
    inputs = llama_inputs(batch=2, length=4)
    model(**inputs, adapter_names=["a1", "a2"])
    assert store.resident == ["a1", "a2"]  # a0 (the model's first) went first
    model(**inputs, adapter_names=["a2", "__base__"])
    model(**inputs, adapter_names=["a4", "a2"])
    assert set(store.resident) == {"a4", "a2"} and "a1" not in model.peft_config
    out = model.generate(**inputs, adapter_names=["a1", "a5"], max_new_tokens=4, do_sample=False)
    assert set(store.resident) == {"a1", "a5"} and store.info("a1").loads == 2
    for row, name in enumerate(["a1", "a5"]):
        alone = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), root / name).eval()
        single = {k: v[row : row + 1] for k, v in inputs.items()}
        assert torch.equal(out[row : row + 1], alone.generate(**single, max_new_tokens=4, do_sample=False))


@torch.no_grad()
def test_the_byte_bound_holds_after_every_call(adapters):
    base, root, names = adapters
    sizes = {}
    model, store = _store(base, root, names)
    for name in names:
        store.prepare([name])
        sizes[name] = store.info(name).memory_bytes
    assert all(size > 0 for size in sizes.values())
    bound = sizes["a1"] + sizes["a3"] + sizes["a0"]  # room for three adapters, two of them large
    model, store = _store(base, root, names, max_bytes=bound)
    inputs = llama_inputs(batch=2, length=3)
    for pair in (["a1", "a3"], ["a5", "a2"], ["a4", "a0"], ["a1", "a5"], ["a3", "a3"]):
        model(**inputs, adapter_names=pair)
        assert store.resident_bytes <= bound and set(pair) <= set(store.resident)
        assert set(model.peft_config) == set(store.resident)


def test_bad_requests_are_clear_errors_and_change_nothing(adapters, tmp_path):
    base, root, names = adapters
    model, store = _store(base, root, names, max_adapters=2)
    inputs = llama_inputs(batch=3, length=3)
    with pytest.raises(AdapterStoreError, match="3 adapters, more than the store's bound of 2"):
        model(**inputs, adapter_names=["a1", "a2", "a3"])
    with pytest.raises(ValueError, match="non-existing adapter"):
        model(**inputs, adapter_names=["a1", "nope", "a2"])
    with pytest.raises(AdapterStoreError, match="holds no adapter weights"):
        store.register("x", tmp_path)
    with pytest.raises(AdapterStoreError, match="reserved"):
        store.register("__base__", root / "a1")
    with pytest.raises(AdapterStoreError, match="holds no adapter folder"):
        store.register_folder(tmp_path)
    with pytest.raises(TypeError, match="needs a PeftModel"):
        AdapterStore(base)
    with pytest.raises(ValueError, match="max_bytes must be positive"):
        AdapterStore(model, max_bytes=0)
    assert len(store) == 6 and set(store.resident) <= set(names)


def test_a_load_triggered_under_inference_mode_gives_normal_tensors(adapters):
    base, root, names = adapters
    model, _ = _store(base, root, names, max_adapters=3)
    inputs = llama_inputs(batch=2, length=3)
    with torch.inference_mode():  # as a server's generate runs: the store loads a2 and a5 in here
        first = model(**inputs, adapter_names=["a2", "a5"]).logits
        again = model(**inputs, adapter_names=["a2", "a5"]).logits
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert not layer.lora_A["a2"].weight.is_inference()
    assert torch.equal(first, again)
    expected = _alone(base, root, "a5", {k: v[1:] for k, v in inputs.items()})
    torch.testing.assert_close(first[1:], expected, atol=1e-5, rtol=0)
