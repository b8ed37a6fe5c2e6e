"""The recorded-reference oracle (tests/oracle.py) decides nothing silently: a missing, stale or
disagreeing answer fails, and a recorded answer replays exactly."""

from __future__ import annotations

import pytest
import torch
from tests.oracle import (
    FLOAT_ATOL,
    UNSTATED_CPU,
    PeftOracle,
    ReferenceFile,
    cpu_kind,
    fingerprint,
    portable_init_,
)
from torch import nn


def _linear(seed: int = 0) -> nn.Linear:
    return portable_init_(nn.Linear(4, 3), seed=seed)


def _answer(model: nn.Module, inputs: torch.Tensor) -> dict:
    with torch.no_grad():
        out = model(inputs)
    return {"logits": out, "argmax": out.argmax(-1), "names": ["weight", "bias"], "scale": 0.5}


def _record(path, model, inputs):
    PeftOracle("test_x", ReferenceFile(path), "record")(lambda: _answer(model, inputs), model, inputs)


def test_recorded_answer_replays_exactly_from_a_fresh_read(tmp_path):
    path, model, inputs = tmp_path / "mod.safetensors", _linear(), torch.randn(2, 4)
    _record(path, model, inputs)
    replayed = PeftOracle("test_x", ReferenceFile(path), "replay")(
        lambda: pytest.fail("ran peft"), model, inputs
    )
    expected = _answer(model, inputs)
    assert torch.equal(replayed["logits"], expected["logits"])  # exact: a bit-for-bit round trip
    assert torch.equal(replayed["argmax"], expected["argmax"]) and replayed["argmax"].dtype == torch.int64
    assert replayed["names"] == ["weight", "bias"] and replayed["scale"] == 0.5
    assert ReferenceFile(path).recorded_with["torch"] == torch.__version__


def test_replay_without_a_recorded_entry_fails(tmp_path):
    path, model, inputs = tmp_path / "mod.safetensors", _linear(), torch.randn(2, 4)
    _record(path, model, inputs)
    oracle = PeftOracle("test_other", ReferenceFile(path), "replay")
    with pytest.raises(AssertionError, match="no recorded peft answer for 'test_other#0'"):
        oracle(lambda: _answer(model, inputs), model, inputs)


def test_second_question_of_a_test_is_its_own_entry(tmp_path):
    path, model, inputs = tmp_path / "mod.safetensors", _linear(), torch.randn(2, 4)
    _record(path, model, inputs)
    oracle = PeftOracle("test_x", ReferenceFile(path), "replay")
    oracle(lambda: None, model, inputs)
    with pytest.raises(AssertionError, match="'test_x#1'"):
        oracle(lambda: None, model, inputs)


@pytest.mark.parametrize("change", ["weights", "inputs"])
def test_replay_for_other_weights_or_inputs_fails(tmp_path, change):
    path, model, inputs = tmp_path / "mod.safetensors", _linear(), torch.randn(2, 4)
    _record(path, model, inputs)
    if change == "weights":
        with torch.no_grad():
            model.weight[0, 0] += 1e-6  # a tiny change is still another question
    else:
        inputs = inputs.clone()
        inputs[1, 3] += 1e-6
    oracle = PeftOracle("test_x", ReferenceFile(path), "replay")
    with pytest.raises(AssertionError, match="recorded from other weights or inputs"):
        oracle(lambda: _answer(model, inputs), model, inputs)


def test_live_answer_that_disagrees_with_the_stored_one_fails(tmp_path):
    path, model, inputs = tmp_path / "mod.safetensors", _linear(), torch.randn(2, 4)
    _record(path, model, inputs)
    shifted = lambda: {**_answer(model, inputs), "logits": _answer(model, inputs)["logits"] + 10 * FLOAT_ATOL}  # noqa: E731
    with pytest.raises(AssertionError, match="differs from the stored reference"):
        PeftOracle("test_x", ReferenceFile(path), "live")(shifted, model, inputs)
    within = lambda: {**_answer(model, inputs), "logits": _answer(model, inputs)["logits"] + FLOAT_ATOL / 10}  # noqa: E731
    live = PeftOracle("test_x", ReferenceFile(path), "live")(within, model, inputs)
    assert torch.allclose(live["logits"], _answer(model, inputs)["logits"], atol=FLOAT_ATOL)


def test_live_answer_that_disagrees_with_one_stored_on_another_kind_of_cpu_is_used_with_a_warning(tmp_path):
    """float32 rounds differently on another kind of CPU: there the live answer counts, and says so."""
    path, model, inputs = tmp_path / "mod.safetensors", _linear(), torch.randn(2, 4)
    _record(path, model, inputs)
    assert ReferenceFile(path).recorded_with["cpu"] == cpu_kind()
    shifted = lambda: {**_answer(model, inputs), "logits": _answer(model, inputs)["logits"] + 10 * FLOAT_ATOL}  # noqa: E731
    elsewhere = ReferenceFile(path)
    elsewhere.recorded_with["cpu"] = "another CPU"
    with pytest.warns(UserWarning, match="stored on another kind of CPU"):
        live = PeftOracle("test_x", elsewhere, "live")(shifted, model, inputs)
    torch.testing.assert_close(live["logits"], shifted()["logits"], atol=0, rtol=0)
    elsewhere.recorded_with.pop("cpu")  # files from before the kind was stored: the AVX2 machines
    if cpu_kind() == UNSTATED_CPU:
        with pytest.raises(AssertionError, match="differs from the stored reference"):
            PeftOracle("test_x", elsewhere, "live")(shifted, model, inputs)
    else:
        with pytest.warns(UserWarning, match=f"another kind of CPU \\({UNSTATED_CPU}"):
            PeftOracle("test_x", elsewhere, "live")(shifted, model, inputs)


def test_live_answer_with_other_labels_fails(tmp_path):
    path, model, inputs = tmp_path / "mod.safetensors", _linear(), torch.randn(2, 4)
    _record(path, model, inputs)
    other = lambda: {**_answer(model, inputs), "names": ["weight"]}  # noqa: E731
    with pytest.raises(AssertionError, match="names"):
        PeftOracle("test_x", ReferenceFile(path), "live")(other, model, inputs)


def test_an_oracle_call_must_name_what_it_depends_on(tmp_path):
    oracle = PeftOracle("test_x", ReferenceFile(tmp_path / "mod.safetensors"), "replay")
    with pytest.raises(TypeError, match="depends on"):
        oracle(lambda: None)


def test_a_file_of_another_format_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "mod.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a peft reference file"):
        ReferenceFile(path)


def test_recording_leaves_no_partial_file(tmp_path):
    path, model, inputs = tmp_path / "mod.safetensors", _linear(), torch.randn(2, 4)
    _record(path, model, inputs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mod.safetensors"]


def test_fingerprint_tells_apart_dtype_shape_and_order():
    x = torch.arange(6.0)
    prints = {
        fingerprint(x),
        fingerprint(x.double()),
        fingerprint(x.view(2, 3)),
        fingerprint([x, 1]),
        fingerprint([1, x]),
        fingerprint({"a": 1}),
        fingerprint({"a": 1.0}),
    }
    assert len(prints) == 7
    assert fingerprint(_linear(seed=5)) == fingerprint(_linear(seed=5)) != fingerprint(_linear(seed=6))


def test_portable_init_depends_only_on_the_seed():
    torch.manual_seed(0)
    first = portable_init_(nn.Linear(8, 4), seed=11)
    torch.manual_seed(123)  # the global generator must not matter
    second = portable_init_(nn.Linear(8, 4), seed=11)
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    assert first.bias.abs().max() < 0.2 and 0.1 < first.weight.std() < 0.7  # N(0, 1/8): std ~0.35
