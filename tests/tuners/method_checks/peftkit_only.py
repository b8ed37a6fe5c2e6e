"""Checks of peftkit alone, where peft is no reference (it lacks the feature, or the answer is the base
model's): merge/unmerge/disable, training, clear errors, mixed batches, low_cpu_mem_usage loading."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from tests.conftest import perturb_adapter_weights

import peftkit
from peftkit.tuners.tuners_utils import BaseTunerLayer
from peftkit.utils.warnings import AdapterLoadError, NoMatchingPeftModuleError

from .cases import BASE_ATOL, MERGE_ATOL, Case, assert_close, config_pair, peftkit_model


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
        assert not any(isinstance(m, BaseTunerLayer) for m in merged_model.modules())
        assert_close(case.out_fn(merged_model, inputs), adapted, MERGE_ATOL, "merge_and_unload")
        unloaded = model.unload()
        assert_close(case.out_fn(unloaded, inputs), base_out, BASE_ATOL, "unload after unmerge")


def check_training_lowers_loss(method: str, case: Case, steps: int = 5, lr: float = 1e-2) -> None:
    torch.manual_seed(0)
    _, ours_config = config_pair(method, case)
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
    _, ours_config = config_pair(method, case)
    model = peftkit.get_peft_model(case.model_fn(), ours_config)
    type_name = ours_config.peft_type.value
    with pytest.raises(AttributeError, match=type_name):
        model.add_weighted_adapter(["default"], [1.0], "combined")


def check_mixed_batch(method: str, case: Case) -> None:
    """`adapter_names=` gives each sample its own adapter or none (peft 0.21 ignores it for the non-LoRA
    methods: there peftkit does better)."""
    _, config = config_pair(method, case)
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


def check_truncated_file_is_a_clear_error(method: str, case: Case, folder: str) -> None:
    """A weights file cut short (an interrupted download) fails to load with an error naming the file, and
    the model is left without adapter layers."""
    base = case.model_fn()
    _, config = config_pair(method, case)
    peftkit.get_peft_model(copy.deepcopy(base), config).save_pretrained(folder)
    path = os.path.join(folder, "adapter_model.safetensors")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    model = copy.deepcopy(base)
    with pytest.raises(AdapterLoadError, match=r"adapter_model\.safetensors.*truncated or corrupt"):
        peftkit.PeftModel.from_pretrained(model, folder)
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
