"""A property-based test of the multi-adapter state machine (issue 20, hypothesis).

Random sequences of add / set / merge / unmerge / delete / disable / save / load over three LoRA
adapters. After every step the model's outputs are compared (fp32, within 1e-5) with a model rebuilt
from scratch: a fresh base with the adapters the sequence should have left, the right one active. The
sequences are derandomized (the same every run) and bounded, so the test is fast and deterministic.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from torch import nn

import peftkit
from peftkit.utils.warnings import PeftWarning

ATOL = 1e-5
NAMES = ("alpha", "beta", "gamma")
RANKS = {"alpha": 2, "beta": 3, "gamma": 4}
X = torch.randn(5, 12, generator=torch.Generator().manual_seed(0))


def _base() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 12))


BASE_STATE = {k: v.clone() for k, v in _base().state_dict().items()}


def _config(name: str) -> peftkit.LoraConfig:
    return peftkit.LoraConfig(r=RANKS[name], lora_alpha=2 * RANKS[name], target_modules=["0", "2"])


def _set_weights(model: peftkit.PeftModel, name: str, seed: int) -> None:
    """The adapter's values: drawn from `seed`, so a rebuilt model can hold the same ones."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, param in sorted(model.named_parameters()):
            if f".{name}." in key:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)


def _rebuild(adapters: dict[str, tuple[str, int]], active: str) -> peftkit.PeftModel:
    """A fresh base with `adapters` (name -> (kind of config, seed of its values)), `active` active."""
    model = None
    for name, (kind, seed) in sorted(adapters.items()):
        if model is None:
            model = peftkit.get_peft_model(_base(), _config(kind), name)
        else:
            model.add_adapter(name, _config(kind))
        _set_weights(model, name, seed)
    model.set_adapter(active)
    return model.eval()


@settings(
    max_examples=20,
    stateful_step_count=10,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
class AdapterStateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        warnings.simplefilter("ignore", PeftWarning)  # merges undone first, deleted active adapters, ...
        self.folder = tempfile.mkdtemp(prefix="peftkit-state-machine-")
        self.adapters: dict[str, tuple[str, int]] = {"alpha": ("alpha", 0)}
        self.active = "alpha"
        self.merged = False
        self.saved: dict[str, tuple[str, int]] | None = None
        self.model = _rebuild(self.adapters, self.active)

    def teardown(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    # ----- steps -----
    @rule(name=st.sampled_from(NAMES), seed=st.integers(0, 3))
    def add(self, name, seed):
        if name in self.adapters:
            return
        self.model.add_adapter(name, _config(name))
        _set_weights(self.model, name, seed)
        self.adapters[name] = (name, seed)
        self.merged = False  # adding an adapter undoes the merge first

    @rule(name=st.sampled_from(NAMES))
    def set_adapter(self, name):
        if name not in self.adapters:
            return
        self.model.set_adapter(name)
        self.active, self.merged = name, False

    @rule()
    def merge(self):
        self.model.merge_adapter()
        self.merged = True

    @rule()
    def unmerge(self):
        self.model.unmerge_adapter()
        self.merged = False

    @precondition(lambda self: len(self.adapters) > 1)
    @rule(name=st.sampled_from(NAMES))
    def delete(self, name):
        if name not in self.adapters:
            return
        if self.merged and name == self.active:
            try:
                self.model.delete_adapter(name)
            except ValueError as err:  # refused: it is merged
                assert name in str(err) and "unmerge_adapter()" in str(err)
                return
            raise AssertionError("deleting a merged adapter was not refused")
        self.model.delete_adapter(name)
        del self.adapters[name]
        if name == self.active:  # the first remaining adapter becomes active
            self.active = sorted(self.adapters)[0]

    @rule()
    def disable(self):
        with self.model.disable_adapter(), torch.no_grad():
            torch.testing.assert_close(self.model(X), _base()(X), atol=ATOL, rtol=0)
        self.merged = False  # disabling undoes the merge first

    @rule()
    def save(self):
        shutil.rmtree(self.folder, ignore_errors=True)
        self.model.save_pretrained(self.folder)
        self.saved = dict(self.adapters)

    @precondition(lambda self: self.saved is not None)
    @rule(source=st.sampled_from(NAMES), name=st.sampled_from(NAMES))
    def load(self, source, name):
        if source not in self.saved or name in self.adapters:
            return
        subfolder = {} if source == "default" else {"subfolder": source}
        self.model.load_adapter(self.folder, name, **subfolder)
        self.adapters[name] = self.saved[source]
        self.merged = False  # loading undoes the merge first

    # ----- the check after every step -----
    @invariant()
    def matches_a_model_rebuilt_from_scratch(self):
        assert set(self.model.peft_config) == set(self.adapters)
        assert self.model.active_adapter == self.active
        assert self.model.base_model.merged_adapter_names() == ([self.active] if self.merged else [])
        reference = _rebuild(self.adapters, self.active)
        with torch.no_grad():
            torch.testing.assert_close(self.model(X), reference(X), atol=ATOL, rtol=0)
        if not self.merged:  # unmerged, the base weights are the original ones again
            base = self.model.get_base_model().state_dict()
            for key, value in BASE_STATE.items():
                layer, leaf = key.rsplit(".", 1)
                torch.testing.assert_close(base[f"{layer}.base_layer.{leaf}"], value, atol=ATOL, rtol=0)


TestAdapterStateMachine = AdapterStateMachine.TestCase
