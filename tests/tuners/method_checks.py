"""Checks every non-LoRA method's tests run against peft (the oracle), one function per property.

A `Case` names a tiny base model, the config kwargs (valid for both libraries' config class of the
method), the inputs and how to read the output. The checks build the adapter in one library, move it
away from its identity initialisation with a seeded perturbation, and compare with the other library
or with the base model. Tolerances are stated where they are used.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import peft
import pytest
import torch
from tests.conftest import conv_net, llama_inputs, perturb_adapter_weights, trainable_names

import peftkit
from peftkit.utils.warnings import NoMatchingPeftModuleError

ROUNDTRIP_ATOL = 1e-5  # an adapter moved between the libraries gives the same logits (the brief's bound)
MERGE_ATOL = 1e-4  # merged vs unmerged forward: the weight is rounded once more
BASE_ATOL = 1e-5  # disabled / unmerged / unloaded vs the untouched base model


def llama_logits(model, inputs):
    return model(**inputs).logits


def conv_output(model, inputs):
    return model(inputs["input_ids"])


def conv_inputs():
    return {"input_ids": torch.randint(0, 20, (3, 8), generator=torch.Generator().manual_seed(3))}


@dataclass
class Case:
    """A base model, the method's config kwargs, its inputs, and how to read its output."""

    model_fn: Callable[[], torch.nn.Module]
    config: dict
    inputs_fn: Callable[[], dict] = llama_inputs
    out_fn: Callable = llama_logits
    task_type: str | None = None
    peft_only: dict = field(default_factory=dict)  # kwargs only the peft config gets (none so far)


def conv_case(config: dict) -> Case:
    return Case(conv_net, config, conv_inputs, conv_output)


def _configs(method: str, case: Case):
    theirs = getattr(peft, method)(task_type=case.task_type, **copy.deepcopy(case.config), **case.peft_only)
    ours = getattr(peftkit, method)(task_type=case.task_type, **copy.deepcopy(case.config))
    return theirs, ours


def peft_model(method: str, case: Case, base: torch.nn.Module, seed: int = 0):
    theirs, _ = _configs(method, case)
    model = peft.get_peft_model(copy.deepcopy(base), theirs)
    perturb_adapter_weights(model, seed=seed)
    return model.eval()


def peftkit_model(method: str, case: Case, base: torch.nn.Module, seed: int = 0):
    _, ours = _configs(method, case)
    model = peftkit.get_peft_model(copy.deepcopy(base), ours)
    perturb_adapter_weights(model, seed=seed)
    return model.eval()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str) -> None:
    diff = (actual - expected).abs().max().item()
    assert diff <= atol, f"{what}: max abs difference {diff:.3g} > {atol}"


# ----- the checks -----
def check_peft_file_loads_in_peftkit(method: str, case: Case, folder: str) -> None:
    base = case.model_fn()
    theirs = peft_model(method, case, base)
    theirs.save_pretrained(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), folder).eval()
    unknown = [str(w.message) for w in caught if "Unexpected keys" in str(w.message)]
    assert not unknown, unknown  # every key peft writes is a field of our config
    inputs = case.inputs_fn()
    with torch.no_grad():
        expected, actual = case.out_fn(theirs, inputs), case.out_fn(ours, inputs)
        base_out = case.out_fn(base, inputs)
    assert (expected - base_out).abs().max() > 1e-3, "the perturbed adapter must change the output"
    assert_close(actual, expected, ROUNDTRIP_ATOL, "peft-saved adapter loaded in peftkit")


def check_peftkit_file_loads_in_peft(method: str, case: Case, folder: str) -> None:
    base = case.model_fn()
    ours = peftkit_model(method, case, base)
    ours.save_pretrained(folder)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), folder).eval()
    inputs = case.inputs_fn()
    with torch.no_grad():
        expected, actual = case.out_fn(ours, inputs), case.out_fn(theirs, inputs)
        base_out = case.out_fn(base, inputs)
    assert (expected - base_out).abs().max() > 1e-3, "the perturbed adapter must change the output"
    assert_close(actual, expected, ROUNDTRIP_ATOL, "peftkit-saved adapter loaded in peft")


def check_same_files_as_peft(method: str, case: Case, tmp_path) -> None:
    """Same adapter_config.json keys and values, same weight keys, shapes and dtypes."""
    from safetensors.torch import load_file

    base = case.model_fn()
    peft_model(method, case, base).save_pretrained(tmp_path / "theirs")
    peftkit_model(method, case, base).save_pretrained(tmp_path / "ours")
    configs = [
        json.loads((tmp_path / side / "adapter_config.json").read_text()) for side in ("theirs", "ours")
    ]
    assert sorted(configs[1]) == sorted(configs[0])
    for key, value in configs[0].items():
        if isinstance(value, list) and key.endswith("modules"):
            assert sorted(configs[1][key]) == sorted(value), key
        else:
            assert configs[1][key] == value, key
    files = [
        load_file(os.path.join(tmp_path, side, "adapter_model.safetensors")) for side in ("theirs", "ours")
    ]
    assert {k: (tuple(v.shape), v.dtype) for k, v in files[1].items()} == {
        k: (tuple(v.shape), v.dtype) for k, v in files[0].items()
    }


def check_trainable_names(method: str, case: Case) -> None:
    theirs_config, ours_config = _configs(method, case)
    base = case.model_fn()
    theirs = peft.get_peft_model(copy.deepcopy(base), theirs_config)
    ours = peftkit.get_peft_model(copy.deepcopy(base), ours_config)
    assert trainable_names(ours) == trainable_names(theirs)
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())


def check_merge_unmerge_disable(method: str, case: Case) -> None:
    base = case.model_fn()
    model = peftkit_model(method, case, base)
    inputs = case.inputs_fn()
    with torch.no_grad():
        base_out = case.out_fn(base, inputs)
        adapted = case.out_fn(model, inputs)
        assert (adapted - base_out).abs().max() > 1e-3
        with model.disable_adapter():
            assert_close(case.out_fn(model, inputs), base_out, BASE_ATOL, "disable_adapter")
        model.merge_adapter(safe_merge=True)
        assert_close(case.out_fn(model, inputs), adapted, MERGE_ATOL, "merged forward")
        with model.disable_adapter():  # disabling unmerges first
            assert_close(case.out_fn(model, inputs), base_out, BASE_ATOL, "disable_adapter after merge")
        model.merge_adapter()
        model.unmerge_adapter()
        assert_close(case.out_fn(model, inputs), adapted, MERGE_ATOL, "unmerged forward")
        merged_model = copy.deepcopy(model).merge_and_unload()
        assert not any(
            isinstance(m, peftkit.tuners.tuners_utils.BaseTunerLayer) for m in merged_model.modules()
        )
        assert_close(case.out_fn(merged_model, inputs), adapted, MERGE_ATOL, "merge_and_unload")
        unloaded = model.unload()
        assert_close(case.out_fn(unloaded, inputs), base_out, BASE_ATOL, "unload after unmerge")


def check_training_lowers_loss(method: str, case: Case, steps: int = 5, lr: float = 1e-2) -> None:
    torch.manual_seed(0)
    _, ours_config = _configs(method, case)
    model = peftkit.get_peft_model(case.model_fn(), ours_config).train()
    inputs = case.inputs_fn()
    shape = case.out_fn(model, inputs).shape
    target = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(case.out_fn(model, inputs), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def check_no_match_error(method: str, case: Case) -> None:
    config = copy.deepcopy(case.config)
    config["target_modules"] = ["does_not_exist"]
    if "feedforward_modules" in config:
        config["feedforward_modules"] = []
    ours = getattr(peftkit, method)(**config)
    with pytest.raises(NoMatchingPeftModuleError, match="does_not_exist"):
        peftkit.get_peft_model(case.model_fn(), ours)


def check_no_weighted_adapter(method: str, case: Case) -> None:
    _, ours_config = _configs(method, case)
    model = peftkit.get_peft_model(case.model_fn(), ours_config)
    type_name = ours_config.peft_type.value
    with pytest.raises(AttributeError, match=type_name):
        model.add_weighted_adapter(["default"], [1.0], "combined")


def check_bf16_equals_peft(method: str, case: Case, atol: float = 1e-6) -> None:
    """On a bf16 base (adapters autocast to fp32), peft's adapter copied into peftkit gives the same
    bf16 logits: the same casts happen in the same places (atol 1e-6: equal up to fp32 noise)."""
    base = case.model_fn().to(torch.bfloat16)
    theirs = peft_model(method, case, base, seed=0)
    _, ours_config = _configs(method, case)
    ours = peftkit.get_peft_model(copy.deepcopy(base), ours_config).eval()
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not missing and not unexpected
    assert {n: p.dtype for n, p in ours.named_parameters()} == {
        n: p.dtype for n, p in theirs.named_parameters()
    }
    inputs = case.inputs_fn()
    with torch.no_grad():
        expected, actual = case.out_fn(theirs, inputs), case.out_fn(ours, inputs)
    assert actual.dtype == expected.dtype
    assert_close(actual.float(), expected.float(), atol, "bf16 forward")


def check_mixed_batch(method: str, case: Case) -> None:
    """`adapter_names=` gives each sample its own adapter or none (peft 0.21 ignores it for the non-LoRA
    methods: there peftkit does better)."""
    _, config = _configs(method, case)
    model = peftkit.get_peft_model(case.model_fn(), config)
    model.add_adapter("second", copy.deepcopy(config))
    model.base_model.set_adapter(["default", "second"])
    perturb_adapter_weights(model)
    model.eval()
    inputs = case.inputs_fn()
    names = ["second", "__base__", "default"]
    inputs = {k: torch.cat([v, v[:1]])[:3] for k, v in inputs.items()}  # three samples
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=names)
        mixed = mixed.logits if hasattr(mixed, "logits") else mixed
        rows = []
        for row, name in enumerate(names):
            if name == "__base__":
                with model.disable_adapter():
                    rows.append(case.out_fn(model, inputs)[row])
            else:
                model.set_adapter(name)
                rows.append(case.out_fn(model, inputs)[row])
    assert (rows[0] - rows[2]).abs().max() > 1e-3, "the two adapters must differ"
    assert_close(mixed, torch.stack(rows), BASE_ATOL, "mixed batch")


def check_low_cpu_mem_usage_load(method: str, case: Case, folder: str) -> None:
    """Loading with low_cpu_mem_usage=True (adapter tensors created on meta, filled from the file) gives
    the same outputs as the saved model (exactly: the same tensors)."""
    base = case.model_fn()
    model = peftkit_model(method, case, base)
    model.save_pretrained(folder)
    loaded = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), folder, low_cpu_mem_usage=True).eval()
    assert not any(t.is_meta for t in loaded.state_dict().values())
    inputs = case.inputs_fn()
    with torch.no_grad():
        assert_close(case.out_fn(loaded, inputs), case.out_fn(model, inputs), 0.0, "low_cpu_mem_usage load")


def _field_defaults(config_cls) -> list[tuple[str, object]]:
    import dataclasses

    def default(f):
        if f.default is not dataclasses.MISSING:
            return f.default
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else "<required>"

    return [(f.name, default(f)) for f in dataclasses.fields(config_cls)]


def check_config_fields(method: str) -> None:
    """The config class has peft's fields, in peft's order (positional arguments), with peft's defaults."""
    assert _field_defaults(getattr(peftkit, method)) == _field_defaults(getattr(peft, method))
