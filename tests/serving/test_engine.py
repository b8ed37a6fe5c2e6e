"""The continuous-batching engine: requests for different adapters, joining and leaving a running batch,
each getting what it would get alone."""

import copy
import random

import pytest
import torch

import peftkit
from peftkit.serving import AdapterStore
from peftkit.serving.engine import BatchEngine, GenerationRequest
from peftkit.serving.sampling import SamplingSettings
from peftkit.tuners.lora import mixed_batch

from .helpers import save_random_adapters, tiny_base


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine-adapters")
    base = tiny_base()
    names = save_random_adapters(base, root, 4)
    model = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), root / names[0], adapter_name=names[0])
    store = AdapterStore(model, max_adapters=3)
    store.register(names[0], root / names[0], adopt=True)
    store.register_folder(root)
    return model.eval(), store, names


def _run(engine, requests):
    """Submit all, step the engine by hand until every request is done; the generated ids per request."""
    handles = [engine.submit(r) for r in requests]
    for _ in range(1000):
        if all(not h.events.empty() and _done(h) for h in handles):
            break
        engine.step()
    return [[value for kind, value in list(h.events.queue) if kind == "token"] for h in handles]


def _done(handle):
    return any(kind != "token" for kind, _ in list(handle.events.queue))


def _requests(names, count, seed=0, sample=False):
    rng = random.Random(seed)
    out = []
    for i in range(count):
        prompt = [rng.randrange(4, 128) for _ in range(rng.randrange(2, 9))]
        sampling = SamplingSettings(temperature=0.8, top_p=0.9, seed=i) if sample else SamplingSettings()
        out.append(GenerationRequest(prompt, names[i % len(names)], rng.randrange(1, 7), sampling))
    return out


@pytest.mark.parametrize("sample", [False, True])
def test_batched_requests_equal_each_request_alone(served, sample):
    model, store, names = served
    requests = _requests([*names, "__base__"], 12, sample=sample)
    engine = BatchEngine(model, store, max_batch=5)
    batched = _run(engine, requests)
    assert engine.largest_batch > 1  # requests really shared decoding steps
    for request, tokens in zip(_requests([*names, "__base__"], 12, sample=sample), batched):
        alone = _run(BatchEngine(model, store, max_batch=1), [request])[0]
        assert tokens == alone and len(tokens) == request.max_new_tokens


def test_greedy_engine_equals_generate(served):
    model, store, names = served
    request = GenerationRequest([5, 9, 17, 33], names[1], 5)
    tokens = _run(BatchEngine(model, store), [request])[0]
    store.prepare([names[1]])
    model.set_adapter(names[1])
    with torch.no_grad():
        expected = model.generate(
            input_ids=torch.tensor([request.prompt_ids]), max_new_tokens=5, do_sample=False
        )
    assert tokens == expected[0, 4:].tolist()


def test_stop_tokens_cancel_and_bad_requests(served):
    model, store, names = served
    engine = BatchEngine(model, store, max_context=16)
    first = _run(engine, [GenerationRequest([5, 6, 7], names[0], 6)])[0]
    stopped = engine.submit(GenerationRequest([5, 6, 7], names[0], 6, stop_token_ids=frozenset({first[1]})))
    cancelled = engine.submit(GenerationRequest([8, 9], names[2], 6))
    engine.step()
    cancelled.cancel()
    for _ in range(10):
        engine.step()
    assert list(stopped.stream())[-1] == ("done", "stop") and stopped.events.empty()
    assert list(cancelled.stream())[-1] == ("done", "cancelled")
    with pytest.raises(ValueError, match="more than this server's context of 16"):
        engine.submit(GenerationRequest(list(range(4, 14)), names[0], 7))
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.submit(GenerationRequest([], names[0], 3))
    with pytest.raises(LookupError, match="Unknown adapter 'nope'"):
        engine.submit(GenerationRequest([4], "nope", 3))


def test_a_failing_forward_fails_its_requests_and_the_engine_goes_on(served, monkeypatch):
    model, store, names = served
    engine = BatchEngine(model, store)
    engine.start()
    try:
        original = engine._forward
        monkeypatch.setattr(engine, "_forward", lambda *args: (_ for _ in ()).throw(RuntimeError("boom")))
        failed = engine.submit(GenerationRequest([4, 5], names[0], 3))
        events = list(failed.stream(timeout=60))
        assert events[-1][0] == "error" and "boom" in events[-1][1]
        monkeypatch.setattr(engine, "_forward", original)
        ok = engine.submit(GenerationRequest([4, 5], names[0], 3))
        assert [kind for kind, _ in ok.stream(timeout=60)] == ["token"] * 3 + ["done"]
    finally:
        engine.stop()


def test_decoding_steps_of_an_unchanged_batch_check_the_adapters_once(served, monkeypatch):
    """The running rows keep one routing while they and the store's adapters stay the same, so the layers
    check their stacked factors once per batch, not at every step (a step's check costs each layer
    ~1 us per adapter); tokens stay those of each request alone."""
    model, store, names = served
    checks = []
    original = mixed_batch._layer_state
    monkeypatch.setattr(mixed_batch, "_layer_state", lambda *a: checks.append(1) or original(*a))
    requests = [GenerationRequest([5, 9, 17], names[0], 6), GenerationRequest([7, 3], names[1], 6)]
    engine = BatchEngine(model, store, max_batch=4)
    handles = [engine.submit(r) for r in requests]
    per_step = []
    while not all(_done(h) for h in handles):
        before = len(checks)
        engine.step()
        per_step.append(len(checks) - before)
    # step 1 admits both (the store prepares their adapters, the prefill routes them) and decodes once;
    # steps 2-5 decode the same rows
    assert len(per_step) == 5 and per_step[0] > 0 and per_step[1:] == [0, 0, 0, 0]
    batched = [[value for kind, value in list(h.events.queue) if kind == "token"] for h in handles]
    assert batched == [_run(BatchEngine(model, store, max_batch=1), [r])[0] for r in requests]
