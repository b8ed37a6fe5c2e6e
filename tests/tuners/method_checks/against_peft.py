"""Checks of a method against peft: files both ways, the same files and names, the same numbers
(bf16 forward, gradients, merged outputs), several adapters, config fields and default targets."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import warnings
from pathlib import Path

import peft
import torch
from peft.utils import constants as peft_constants
from safetensors.torch import load_file
from tests.conftest import llama_inputs, perturb_adapter_weights, trainable_names

import peftkit
from peftkit.tuners.tuners_utils import BaseTunerLayer
from peftkit.utils import constants as peftkit_constants

from .cases import (
    MERGED_WEIGHT_ATOL,
    NUMERIC_ATOL,
    ROUNDTRIP_ATOL,
    Case,
    assert_close,
    config_pair,
    paired,
    peft_model,
    peftkit_model,
)


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


def check_second_adapter_moves_both_ways(base, ours, folder: Path):
    """`ours` (peftkit, adapters "default" and "second") saved to `folder / "ours"` loads in peft, which
    saves it to `folder / "theirs"`, which loads in peftkit again: with "second" active the three give the
    same logits (1e-5). Returns the model loaded back, for the method's own checks."""
    ours.eval().save_pretrained(folder / "ours")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), folder / "ours")
    theirs.load_adapter(folder / "ours" / "second", adapter_name="second")
    theirs.save_pretrained(folder / "theirs")
    back = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), folder / "theirs")
    back.load_adapter(folder / "theirs" / "second", adapter_name="second")
    inputs = llama_inputs()
    for model in (ours, theirs, back):
        model.set_adapter("second")
    with torch.no_grad():
        expected = ours(**inputs).logits
        assert_close(theirs(**inputs).logits, expected, ROUNDTRIP_ATOL, "peft loads our second")
        assert_close(back(**inputs).logits, expected, ROUNDTRIP_ATOL, "and back")
    return back


def check_same_files_as_peft(method: str, case: Case, tmp_path) -> None:
    """Same adapter_config.json keys and values, same weight keys, shapes and dtypes."""
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
    theirs_config, ours_config = config_pair(method, case)
    base = case.model_fn()
    theirs = peft.get_peft_model(copy.deepcopy(base), theirs_config)
    ours = peftkit.get_peft_model(copy.deepcopy(base), ours_config)
    assert trainable_names(ours) == trainable_names(theirs)
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())


def check_same_files_and_names(method: str, case: Case, folder: str) -> None:
    """Same adapter_config.json, weight keys, shapes and dtypes; same trainable and state-dict names."""
    check_same_files_as_peft(method, case, Path(folder))
    check_trainable_names(method, case)


def check_bf16_equals_peft(method: str, case: Case, atol: float = 1e-6) -> None:
    """On a bf16 base (adapters autocast to fp32), peft's adapter copied into peftkit gives the same
    bf16 logits: the same casts happen in the same places (atol 1e-6: equal up to fp32 noise)."""
    _, theirs, ours = paired(method, case, base=case.model_fn().to(torch.bfloat16))
    assert {n: p.dtype for n, p in ours.named_parameters()} == {
        n: p.dtype for n, p in theirs.named_parameters()
    }
    inputs = case.inputs_fn()
    with torch.no_grad():
        expected, actual = case.out_fn(theirs, inputs), case.out_fn(ours, inputs)
    assert actual.dtype == expected.dtype
    assert_close(actual.float(), expected.float(), atol, "bf16 forward")


def _output_and_gradients(model, case: Case, inputs: dict) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    out = case.out_fn(model, inputs)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))  # a loss seeing every output
    (out * weights).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return out.detach(), grads


def check_gradients_equal_peft(method: str, case: Case, second: dict | None = None) -> None:
    """The same adapter weights in both libraries: the same outputs, and the same gradient of one loss on
    every trainable tensor, within 1e-5 (each one non-zero in peft, so the check proves something).
    `second`: config kwargs of a second adapter, active beside the first."""
    _, theirs, ours = paired(method, case, second=second)  # eval mode: no dropout, gradients still flow
    inputs = case.inputs_fn()
    expected, expected_grads = _output_and_gradients(theirs, case, inputs)
    actual, actual_grads = _output_and_gradients(ours, case, inputs)
    assert_close(actual, expected, NUMERIC_ATOL, "forward")
    assert actual_grads.keys() == expected_grads.keys() and expected_grads
    for name, grad in expected_grads.items():
        assert grad is not None and grad.abs().max() > 0, f"{name}: peft's gradient is zero or missing"
        assert actual_grads[name] is not None, f"{name}: no gradient in peftkit"
        assert_close(actual_grads[name], grad, NUMERIC_ATOL, f"gradient of {name}")


def check_merged_equals_peft(method: str, case: Case, second: dict | None = None) -> None:
    """merge_and_unload, merge_adapter (outputs within 1e-5, merged base weights within 1e-6) and
    unmerge_adapter give peft's outputs. `second`: config kwargs of a second adapter, active (and
    merged) beside the first."""
    base, theirs, ours = paired(method, case, second=second)
    inputs = case.inputs_fn()
    with torch.no_grad():
        adapted = case.out_fn(theirs, inputs)
        assert (adapted - case.out_fn(base, inputs)).abs().max() > 1e-3, "the adapter must change the output"
        theirs_merged, ours_merged = (
            copy.deepcopy(theirs).merge_and_unload(),
            copy.deepcopy(ours).merge_and_unload(),
        )
        expected = case.out_fn(theirs_merged, inputs)
        assert_close(case.out_fn(ours_merged, inputs), expected, NUMERIC_ATOL, "merge_and_unload")
        for model in (theirs, ours):
            model.merge_adapter()
        assert_close(case.out_fn(ours, inputs), case.out_fn(theirs, inputs), NUMERIC_ATOL, "merged forward")
        theirs_weights = dict(theirs.named_parameters())
        for name, weight in ours.named_parameters():
            if name.endswith("base_layer.weight"):
                assert_close(weight, theirs_weights[name], MERGED_WEIGHT_ATOL, f"merged {name}")
        try:
            theirs.unmerge_adapter()
        except NotImplementedError:  # peft cannot unmerge this method (OSF): there is no answer to compare
            return
        ours.unmerge_adapter()
        assert_close(case.out_fn(ours, inputs), case.out_fn(theirs, inputs), NUMERIC_ATOL, "unmerged forward")


def _two_adapter_model(lib, method: str, case: Case, base):
    config = getattr(lib, method)(task_type=case.task_type, **copy.deepcopy(case.config))
    model = lib.get_peft_model(copy.deepcopy(base), config)
    model.add_adapter("second", copy.deepcopy(config))
    return model.eval()


def check_several_adapters_equal_peft(method: str, case: Case) -> None:
    """Two adapters in one model: set_adapter picks the same one, delete_adapter leaves the same tensors
    and outputs as in peft (the deleted adapter's state is gone from every layer), within 1e-5."""
    base = case.model_fn()
    theirs = _two_adapter_model(peft, method, case, base)
    perturb_adapter_weights(theirs)
    theirs.set_adapter("second")
    perturb_adapter_weights(theirs, seed=1)
    ours = _two_adapter_model(peftkit, method, case, base)
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not missing and not unexpected
    inputs = case.inputs_fn()
    with torch.no_grad():
        for name in ("default", "second"):
            theirs.set_adapter(name)
            ours.set_adapter(name)
            assert_close(
                case.out_fn(ours, inputs), case.out_fn(theirs, inputs), NUMERIC_ATOL, f"adapter {name}"
            )
        for model in (theirs, ours):
            model.delete_adapter("default")
        assert ours.active_adapters == theirs.active_adapters == ["second"]
        assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
        assert_close(
            case.out_fn(ours, inputs), case.out_fn(theirs, inputs), NUMERIC_ATOL, "after delete_adapter"
        )
    layers = [m for m in ours.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and all(m._all_available_adapter_names() == ["second"] for m in layers)


def _field_defaults(config_cls) -> list[tuple[str, object]]:
    def default(f):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            return "<required>"
        if dataclasses.is_dataclass(
            value
        ):  # each library's own class (LoraRuntimeConfig): by name and fields
            return type(value).__name__, dataclasses.asdict(value)
        return value

    return [(f.name, default(f)) for f in dataclasses.fields(config_cls)]


def check_config_fields(method: str) -> None:
    """The config class has peft's fields, in peft's order (positional arguments), with peft's defaults."""
    assert _field_defaults(getattr(peftkit, method)) == _field_defaults(getattr(peft, method))


def check_default_targets(*names: str) -> None:
    """peftkit's default-target tables of these names (in `utils.constants`) are peft's."""
    for name in names:
        assert getattr(peftkit_constants, name) == getattr(peft_constants, name), name
