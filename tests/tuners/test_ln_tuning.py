"""LN tuning against peft: files move both ways with the same logits, same parameter names, merge by
swapping the trained copy in, one adapter at a time."""

import copy

import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_gpt2, tiny_llama
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case, conv_case

import peftkit

METHOD = "LNTuningConfig"

CASES = {
    "llama_defaults": Case(tiny_llama, {}, task_type="CAUSAL_LM"),
    "gpt2_defaults_layernorm_bias": Case(tiny_gpt2, {}, task_type="CAUSAL_LM"),
    "llama_any_module": Case(tiny_llama, {"target_modules": ["q_proj", "norm"]}),
    "conv_layers": conv_case({"target_modules": ["conv2d", "lin"]}),
}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_defaults",
        mixed_batch=None,  # one adapter at a time (tested below)
        default_targets="TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING",
    )
)


def _two_adapters():
    base = tiny_llama()
    model = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LNTuningConfig(target_modules=["norm"]))
    model.add_adapter("second", peftkit.LNTuningConfig(target_modules=["norm"]))
    model.base_model.set_adapter(["default", "second"])
    perturb_adapter_weights(model)
    model.set_adapter("default")
    return base, model.eval()


def test_one_adapter_at_a_time():
    _, model = _two_adapters()
    model.base_model.set_adapter(["default", "second"])
    with pytest.raises(ValueError, match="2 active adapters.*one adapter at a time"):
        model(**llama_inputs())
    with pytest.raises(ValueError, match="merge 2 adapters.*one adapter at a time"):
        model.merge_adapter()


def test_merging_another_adapter_unmerges_the_first():
    base, model = _two_adapters()
    inputs = llama_inputs()
    with torch.no_grad():
        model.set_adapter("second")
        second = model(**inputs).logits
        model.set_adapter("default")
        model.merge_adapter()
        model.merge_adapter(["second"])
        norm = model.base_model.model.model.norm
        assert norm.merged_adapters == ["second"]
        checks.assert_close(
            model(**inputs).logits, second, 0.0, "merged second adapter"
        )  # the copy itself runs
        model.unmerge_adapter()
        with model.disable_adapter():
            checks.assert_close(
                model(**inputs).logits, base(**inputs).logits, 0.0, "original module restored"
            )


def test_deleting_a_merged_adapter_is_refused():
    _, model = _two_adapters()
    model.merge_adapter()
    with pytest.raises(ValueError, match="while they are merged"):
        model.delete_adapter("default")


def test_mixed_batch_gives_each_sample_its_adapter():
    """peft 0.21 ignores `adapter_names` for LN tuning; peftkit runs each sample through its adapter's copy."""
    base, model = _two_adapters()
    inputs = llama_inputs(batch=3)
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=["second", "__base__", "default"]).logits
        model.set_adapter("second")
        row0 = model(**inputs).logits[0]
        model.set_adapter("default")
        row2 = model(**inputs).logits[2]
        row1 = base(**inputs).logits[1]
    checks.assert_close(mixed, torch.stack([row0, row1, row2]), checks.BASE_ATOL, "mixed batch")
