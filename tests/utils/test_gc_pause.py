"""`gc_paused`: adapter injection pauses the cyclic garbage collector and always restores it."""

import gc

import pytest
from tests.conftest import tiny_llama

from peftkit import LoraConfig, get_peft_model
from peftkit.utils.gc_pause import gc_paused


@pytest.fixture
def gc_enabled():
    was_enabled = gc.isenabled()
    gc.enable()
    yield
    if not was_enabled:
        gc.disable()


def test_paused_inside_and_restored_after(gc_enabled):
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():  # re-entrant: the inner block must not switch it back on early
            pass
        assert not gc.isenabled()
    assert gc.isenabled()


def test_restored_after_an_error(gc_enabled):
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_disabled_collector_stays_disabled(gc_enabled):
    gc.disable()
    with gc_paused():
        pass
    assert not gc.isenabled()


def test_injection_leaves_the_collector_on(gc_enabled):
    model = get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj"]))
    model.add_adapter("second", LoraConfig(target_modules=["v_proj"]))
    with pytest.raises(ValueError, match="not_a_module"):  # a failed injection restores it as well
        model.add_adapter("third", LoraConfig(target_modules=["not_a_module"]))
    assert gc.isenabled()
