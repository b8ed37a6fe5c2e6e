"""AdaMSS against peft: the same subspaces (clustering included), the same initial tensors from a seed,
files both ways with the same outputs, same keys and config, gradients, merged weights and ASA masking.

peft's AdaMSS needs scikit-learn (a test dependency; peftkit's AdaMSS does not need it): peft's answers
come from the oracle of tests/oracle.py, live where scikit-learn is installed and recorded in
tests/peft_reference/tuners__test_adamss.safetensors elsewhere. The clustering's near ties round
differently on another kind of CPU, so the live answers are compared with the recorded ones only on the
kind of CPU that recorded them (see tests/oracle.py). Re-record (after changing a test here) where
scikit-learn is installed:

    PEFTKIT_RECORD_PEFT_REFERENCES=1 python -m pytest tests/tuners/test_adamss.py

The base models' weights are drawn by `portable_init_`, so the answers do not depend on how a
transformers version initialises a model.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_gpt2, tiny_llama, trainable_names
from tests.oracle import oracle_for, portable_init_
from tests.tuners import method_checks as checks

import peftkit
from peftkit.utils.warnings import AdapterLoadError, NoMatchingPeftModuleError

ATOL = 1e-5  # the brief's bound for equal outputs (fp32)
HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None

# name -> (base model kwargs, config kwargs, task_type)
CASES = {
    "q_v_with_bias": (
        {"attention_bias": True},
        {"r": 16, "num_subspaces": 3, "subspace_rank": 2, "target_modules": ["q_proj", "v_proj"]},
        None,
    ),
    "mlp_defaults": ({}, {"target_modules": ["up_proj", "down_proj"]}, None),
    "dynamic_rank_random_init": (
        {"attention_bias": True},
        {
            "r": 24,
            "num_subspaces": 4,
            "subspace_rank": 3,
            "use_dynamic_rank": True,
            "svd_threshold": 0.2,
            "init_weights": None,
            "random_seed": 7,
            "target_modules": ["o_proj", "k_proj"],
        },
        None,
    ),
    "default_targets_causal_lm": ({}, {"num_subspaces": 2}, "CAUSAL_LM"),
}


@pytest.fixture(autouse=True)
def one_thread():
    """The SVDs behind AdaMSS's initial tensors round differently with more threads; the recorded peft
    answers are fingerprinted by those tensors, so both sides compute them on one thread, as recorded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def oracle(request):
    """peft's answer: live with scikit-learn, else the recorded one (recorded with the env variable)."""
    if os.environ.get("PEFTKIT_RECORD_PEFT_REFERENCES") == "1":
        if not HAS_SKLEARN:
            raise RuntimeError(
                "recording peft's AdaMSS answers needs scikit-learn (peft's AdaMSS imports it)"
            )
        mode = "record"
    else:
        mode = "live" if HAS_SKLEARN else "replay"
    return oracle_for(request.node.path, request.node.name, mode=mode)


def base_model(case: str) -> torch.nn.Module:
    return portable_init_(tiny_llama(**CASES[case][0]), seed=5).eval()


def our_config(case: str, **overrides) -> peftkit.AdamssConfig:
    _, kwargs, task_type = CASES[case]
    return peftkit.AdamssConfig(task_type=task_type, **copy.deepcopy({**kwargs, **overrides}))


def peft_config(case: str):
    import peft

    _, kwargs, task_type = CASES[case]
    return peft.AdamssConfig(task_type=task_type, **copy.deepcopy(kwargs))


def adapter_tensors(model) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in model.state_dict().items() if "adamss_" in n}


def scatter_indices(model) -> dict[str, torch.Tensor]:
    return {
        name: module.scatter_index["default"]
        for name, module in model.named_modules()
        if hasattr(module, "scatter_index") and "default" in getattr(module, "scatter_index", {})
    }


def saved(model, folder) -> tuple[dict[str, torch.Tensor], dict]:
    model.save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = sorted(config["target_modules"])  # peft writes them from a set
    return load_file(folder / "adapter_model.safetensors"), config


def merged_base_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".base_layer." in n}


def peft_answer(case: str, folder) -> dict:
    """Everything peft computes for `case`: seeded initial tensors and subspaces, then (perturbed) the
    saved file, outputs, gradients, trainable names and merged weights."""
    import peft

    base = base_model(case)
    torch.manual_seed(0)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft_config(case))
    initial, scatter = adapter_tensors(theirs), scatter_indices(theirs)
    trainable = trainable_names(theirs)
    perturb_adapter_weights(theirs)
    theirs.eval()
    file_tensors, file_config = saved(theirs, folder)
    inputs = llama_inputs()
    theirs(**inputs).logits.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in theirs.named_parameters() if p.requires_grad}
    with torch.no_grad():
        logits = theirs(**inputs).logits
        theirs.merge_adapter()
        merged, merged_logits = merged_base_weights(theirs), theirs(**inputs).logits
    return {
        "initial": initial,
        "scatter": scatter,
        "trainable": trainable,
        "state_keys": sorted(theirs.state_dict()),
        "file": file_tensors,
        "config": json.dumps(file_config, sort_keys=True),
        "logits": logits,
        "grads": grads,
        "merged": merged,
        "merged_logits": merged_logits,
    }


@pytest.mark.parametrize("case", list(CASES))
def test_equals_peft(case, oracle, tmp_path):
    """Seeded initialisation and subspaces bit-identical to peft's; peft's file loads with the same
    outputs (1e-5); the same file keys, shapes, dtypes and config; the same trainable names, gradients
    (1e-5) and merged weights (1e-6)."""
    base = base_model(case)
    expected = oracle(lambda: peft_answer(case, tmp_path / "theirs"), base, CASES[case], llama_inputs())
    torch.manual_seed(0)
    ours = peftkit.get_peft_model(copy.deepcopy(base), our_config(case))
    initial = adapter_tensors(ours)
    assert sorted(initial) == sorted(expected["initial"])
    for name, tensor in expected["initial"].items():  # equal to the last bit live; 1e-6 across machines
        checks.assert_close(initial[name], tensor, 1e-6, f"initial {name}")
    scatter = scatter_indices(ours)
    assert sorted(scatter) == sorted(expected["scatter"])
    for name, index in expected["scatter"].items():
        assert torch.equal(scatter[name], index), f"subspaces of {name}"
    assert trainable_names(ours) == expected["trainable"]
    assert sorted(ours.state_dict()) == expected["state_keys"]

    # peft's saved adapter, loaded in peftkit
    folder = tmp_path / "from_peft"
    folder.mkdir()
    save_file(expected["file"], str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(expected["config"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), folder, is_trainable=True).eval()
    assert not [w for w in caught if "Unexpected keys" in str(w.message)]
    inputs = llama_inputs()
    with torch.no_grad():
        assert (expected["logits"] - base(**inputs).logits).abs().max() > 1e-3
        checks.assert_close(
            loaded(**inputs).logits, expected["logits"], ATOL, "peft-saved adapter in peftkit"
        )

    # the same file as peft writes
    file_tensors, file_config = saved(loaded, tmp_path / "ours")
    assert {k: (tuple(v.shape), v.dtype) for k, v in file_tensors.items()} == {
        k: (tuple(v.shape), v.dtype) for k, v in expected["file"].items()
    }
    assert json.dumps(file_config, sort_keys=True) == expected["config"]

    loaded(**inputs).logits.square().mean().backward()
    grads = {n: p.grad for n, p in loaded.named_parameters() if p.requires_grad}
    assert sorted(grads) == sorted(expected["grads"])
    for name, grad in expected["grads"].items():
        checks.assert_close(grads[name], grad, ATOL, f"gradient of {name}")
    with torch.no_grad():
        loaded.merge_adapter()
        merged = merged_base_weights(loaded)
        for name, weight in expected["merged"].items():
            checks.assert_close(merged[name], weight, 1e-6, f"merged {name}")
        checks.assert_close(loaded(**inputs).logits, expected["merged_logits"], ATOL, "merged forward")


@pytest.mark.parametrize("case", ["q_v_with_bias", "dynamic_rank_random_init"])
def test_peftkit_file_loads_in_peft(case, oracle, tmp_path):
    base = base_model(case)
    ours = peftkit.get_peft_model(copy.deepcopy(base), our_config(case))
    perturb_adapter_weights(ours, seed=1)
    ours.eval()
    file_tensors, file_config = saved(ours, tmp_path / "ours")

    def peft_loads_it():
        import peft

        return (
            peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours")
            .eval()(**llama_inputs())
            .logits
        )

    inputs = llama_inputs()
    expected = oracle(peft_loads_it, base, file_tensors, json.dumps(file_config, sort_keys=True), inputs)
    with torch.no_grad():
        actual = ours(**inputs).logits
        assert (actual - base(**inputs).logits).abs().max() > 1e-3
    checks.assert_close(actual, expected, ATOL, "peftkit-saved adapter in peft")


def test_bf16_base_equals_peft(oracle):
    """On a bf16 base (adapter tensors autocast to fp32, V^T too, as peft), peft's adapter copied into
    peftkit gives the same bf16 logits (1e-6)."""
    base = base_model("q_v_with_bias").to(torch.bfloat16)

    def peft_bf16():
        import peft

        theirs = peft.get_peft_model(copy.deepcopy(base), peft_config("q_v_with_bias"))
        perturb_adapter_weights(theirs)
        state = adapter_tensors(theirs)
        dtypes = {n: str(t.dtype) for n, t in state.items()}
        return {"state": state, "dtypes": dtypes, "logits": theirs.eval()(**llama_inputs()).logits}

    expected = oracle(peft_bf16, base, llama_inputs())
    ours = peftkit.get_peft_model(copy.deepcopy(base), our_config("q_v_with_bias")).eval()
    assert {n: str(t.dtype) for n, t in adapter_tensors(ours).items()} == expected["dtypes"]
    result = ours.load_state_dict(expected["state"], strict=False)
    assert not result.unexpected_keys
    with torch.no_grad():
        actual = ours(**llama_inputs()).logits
    assert actual.dtype == torch.bfloat16
    checks.assert_close(actual.float(), expected["logits"].float(), 1e-6, "bf16 forward")


def _asa_config() -> dict:
    return {
        "use_asa": True,
        "asa_target_subspaces": 4,
        "init_warmup": 1,
        "final_warmup": 5,
        "mask_interval": 2,
    }


def run_asa(lib, base, steps: int = 6) -> dict:
    """Train a few steps calling `update_and_allocate`; which subspaces train afterwards, and the scores."""
    config = lib.AdamssConfig(**CASES["q_v_with_bias"][1], **_asa_config())
    torch.manual_seed(0)
    model = lib.get_peft_model(copy.deepcopy(base), config)
    perturb_adapter_weights(model, seed=2)
    inputs = llama_inputs()
    target = torch.randn(2, 7, 128, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    masks = []
    for step in range(1, steps + 1):
        torch.nn.functional.mse_loss(model(**inputs).logits, target).backward()
        optimizer.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
        masks.append([n for n, p in sorted(model.named_parameters()) if "adamss_" in n and p.requires_grad])
    layer = model.base_model.model.model.layers[1].self_attn.v_proj
    return {"masks": masks, "importance_A": [t for t in layer.exp_avg_ipt_A["default"] if t is not None]}


def test_adaptive_subspace_allocation_equals_peft(oracle):
    """The same subspaces stay trainable after each step as in peft (a global top-k of the scores, on a
    falling schedule), and the same importance scores."""
    base = base_model("q_v_with_bias")

    def peft_asa():
        import peft

        return run_asa(peft, base)

    expected = oracle(peft_asa, base, llama_inputs(), _asa_config())
    actual = run_asa(peftkit, base)
    assert actual["masks"] == expected["masks"]
    total = len(expected["masks"][0])
    assert len(expected["masks"][-1]) < total  # some subspaces were frozen
    assert len(actual["importance_A"]) == len(expected["importance_A"])
    for ours_score, theirs_score in zip(actual["importance_A"], expected["importance_A"]):
        checks.assert_close(ours_score, theirs_score, ATOL, "importance")


# ----- peftkit's own behaviour (no peft needed) -----
def ours_perturbed(case: str = "q_v_with_bias", **overrides):
    base = base_model(case)
    model = peftkit.get_peft_model(copy.deepcopy(base), our_config(case, **overrides))
    perturb_adapter_weights(model)
    return base, model.eval()


@pytest.mark.parametrize("case", ["q_v_with_bias", "mlp_defaults"])
def test_merge_unmerge_disable(case):
    base, model = ours_perturbed(case)
    inputs = llama_inputs()
    with torch.no_grad():
        base_out, adapted = base(**inputs).logits, model(**inputs).logits
        assert (adapted - base_out).abs().max() > 1e-3
        with model.disable_adapter():
            checks.assert_close(model(**inputs).logits, base_out, checks.BASE_ATOL, "disable_adapter")
        model.merge_adapter(safe_merge=True)
        checks.assert_close(model(**inputs).logits, adapted, checks.MERGE_ATOL, "merged forward")
        with model.disable_adapter():  # disabling unmerges first
            checks.assert_close(model(**inputs).logits, base_out, checks.BASE_ATOL, "disabled after merge")
        model.merge_adapter()
        model.unmerge_adapter()
        checks.assert_close(model(**inputs).logits, adapted, checks.MERGE_ATOL, "unmerged forward")
        merged = copy.deepcopy(model).merge_and_unload()
        assert not any(isinstance(m, peftkit.tuners.tuners_utils.BaseTunerLayer) for m in merged.modules())
        checks.assert_close(merged(**inputs).logits, adapted, checks.MERGE_ATOL, "merge_and_unload")
        checks.assert_close(model.unload()(**inputs).logits, base_out, checks.BASE_ATOL, "unload")


def test_training_lowers_loss():
    torch.manual_seed(0)
    model = peftkit.get_peft_model(base_model("q_v_with_bias"), our_config("q_v_with_bias")).train()
    inputs = llama_inputs()
    target = torch.randn(2, 7, 128, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(model(**inputs).logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_several_adapters_and_mixed_batch():
    """A second adapter (other subspaces), set_adapter, delete_adapter, and `adapter_names=` giving each
    sample its own adapter or none."""
    base = base_model("q_v_with_bias")
    model = peftkit.get_peft_model(copy.deepcopy(base), our_config("q_v_with_bias"))
    model.add_adapter("second", our_config("q_v_with_bias", num_subspaces=2, random_seed=3))
    model.base_model.set_adapter(["default", "second"])
    perturb_adapter_weights(model)
    model.eval()
    inputs = llama_inputs(batch=3)
    names = ["second", "__base__", "default"]
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=names).logits
        rows = []
        for row, name in enumerate(names):
            if name == "__base__":
                with model.disable_adapter():
                    rows.append(model(**inputs).logits[row])
            else:
                model.set_adapter(name)
                rows.append(model(**inputs).logits[row])
    assert (rows[0] - rows[2]).abs().max() > 1e-3
    checks.assert_close(mixed, torch.stack(rows), checks.BASE_ATOL, "mixed batch")
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.num_subspaces == {"default": 3, "second": 2}
    model.delete_adapter("second")
    assert "second" not in layer.adamss_newB and "second" not in layer.scatter_index
    assert sorted(model.peft_config) == ["default"]


def test_low_cpu_mem_usage_load(tmp_path):
    base, model = ours_perturbed()
    model.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, low_cpu_mem_usage=True).eval()
    assert not any(t.is_meta for t in loaded.state_dict().values())
    with torch.no_grad():
        checks.assert_close(
            loaded(**llama_inputs()).logits, model(**llama_inputs()).logits, 0.0, "low_cpu_mem_usage"
        )


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(NoMatchingPeftModuleError, match="does_not_exist"):
        peftkit.get_peft_model(
            base_model("mlp_defaults"), peftkit.AdamssConfig(target_modules=["does_not_exist"])
        )
    with pytest.raises(ValueError, match="not supported by AdamssModel"):  # GPT-2's Conv1D, as in peft
        peftkit.get_peft_model(tiny_gpt2(), peftkit.AdamssConfig(target_modules=["c_attn"]))
    _, model = ours_perturbed()
    with pytest.raises(AttributeError, match="ADAMSS"):
        model.add_weighted_adapter(["default"], [1.0], "combined")
    model.save_pretrained(tmp_path / "ok")
    other = tiny_llama(hidden_size=48, num_attention_heads=4, intermediate_size=96)
    with pytest.raises(AdapterLoadError, match="Size mismatch"):
        peftkit.PeftModel.from_pretrained(other, tmp_path / "ok")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((tmp_path / "ok" / "adapter_config.json").read_text())
    data = (tmp_path / "ok" / "adapter_model.safetensors").read_bytes()
    (broken / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterLoadError, match="adapter_model.safetensors"):
        peftkit.PeftModel.from_pretrained(base_model("q_v_with_bias"), broken)


def test_quantized_layers_are_adapted_on_their_dequantized_weight():
    """On bitsandbytes layers the SVD, the subspaces and the frozen V^T are those of the dequantized weight
    (peft's AdaMSS fails there; tests/quantization/test_every_method.py checks the outputs)."""
    from tests.quantization.helpers import dequantized_copy, quantizable_llama, quantize_linears

    quantized = quantize_linears(quantizable_llama(), bits=8)
    config = peftkit.AdamssConfig(r=16, num_subspaces=3, target_modules=["q_proj", "down_proj"])
    torch.manual_seed(0)  # the subspaces' starting projections draw from the global RNG
    ours = peftkit.get_peft_model(copy.deepcopy(quantized), copy.deepcopy(config))
    reference = dequantized_copy(quantized)
    torch.manual_seed(0)
    reference = peftkit.get_peft_model(reference, config)
    expected = scatter_indices(reference)
    assert expected.keys() == scatter_indices(ours).keys() and len(expected) == 4
    for name, index in scatter_indices(ours).items():
        assert torch.equal(index, expected[name]), name
    tensors, reference_tensors = adapter_tensors(ours), adapter_tensors(reference)
    assert tensors.keys() == reference_tensors.keys()
    for name, tensor in tensors.items():
        assert torch.equal(tensor, reference_tensors[name]), name


def test_repeated_rows_that_leave_a_subspace_empty_are_a_clear_error():
    """Singular vectors with fewer distinct rows than subspaces leave a cluster empty (peft then fails with
    a KeyError or an empty subspace); peftkit names the problem."""
    from peftkit.tuners.adamss.decomposition import row_clusters

    left = torch.randn(2, 3, generator=torch.Generator().manual_seed(0)).repeat(4, 1)
    assert [rows.tolist() for rows in row_clusters(left, 2)] in (
        [[0, 2, 4, 6], [1, 3, 5, 7]],
        [[1, 3, 5, 7], [0, 2, 4, 6]],
    )
    with pytest.raises(ValueError, match="could form only 2 of 3 subspaces"):
        row_clusters(left, 3)


def test_config_validation():
    assert peftkit.AdamssConfig(init_weights=False).init_weights is None  # peft's older spelling
    with pytest.raises(ValueError, match="init_weights must be 'orthogonal' or None"):
        peftkit.AdamssConfig(init_weights="gaussian")
    for name in ("r", "num_subspaces", "subspace_rank"):
        with pytest.raises(ValueError, match=f"`{name}` must be a positive integer"):
            peftkit.AdamssConfig(**{name: 0})
    with pytest.raises(ValueError, match="init_warmup` must be smaller than `final_warmup"):
        peftkit.AdamssConfig(use_asa=True, init_warmup=10, final_warmup=10)
    with pytest.raises(ValueError, match="mask_interval"):
        peftkit.AdamssConfig(use_asa=True, mask_interval=0)
    with pytest.raises(ValueError, match="asa_target_subspaces"):
        peftkit.AdamssConfig(use_asa=True, asa_target_subspaces=0)
    with pytest.raises(ValueError, match="asa_schedule_exponent"):
        peftkit.AdamssConfig(use_asa=True, asa_schedule_exponent=0.0)
    peftkit.AdamssConfig(mask_interval=0)  # the ASA settings are checked only with use_asa, as in peft


def test_config_fields_and_defaults_are_peft_s():
    checks.check_config_fields("AdamssConfig")
    assert peftkit.AdamssConfig().r == 100


def test_default_targets_per_architecture_are_peft_s():
    from peft.utils import constants as theirs

    from peftkit.utils import constants as ours

    name = "TRANSFORMERS_MODELS_TO_ADAMSS_TARGET_MODULES_MAPPING"
    assert getattr(ours, name) == getattr(theirs, name)
    assert getattr(ours, name)["vit"] == ["query", "value"]


def test_needs_no_scikit_learn(monkeypatch):
    """peft's AdaMSS imports scikit-learn for its k-means; peftkit's reproduces it and never imports it
    (with `sys.modules["sklearn"] = None`, any import of it fails)."""
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)
    model = peftkit.get_peft_model(base_model("q_v_with_bias"), our_config("q_v_with_bias"))
    assert model.base_model.model.model.layers[0].self_attn.q_proj.num_subspaces["default"] == 3


def test_asa_callback_calls_update_and_allocate():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from peftkit.tuners.adamss.asa_callback import AdamssAsaCallback

    config = our_config("q_v_with_bias", **_asa_config())
    model = peftkit.get_peft_model(base_model("q_v_with_bias"), config)
    model(**llama_inputs()).logits.square().mean().backward()
    state = TrainerState()
    state.global_step = 1  # within the warmup window: the scores start
    AdamssAsaCallback().on_optimizer_step(
        TrainingArguments(output_dir="unused", report_to=[]), state, TrainerControl(), model=model
    )
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert all(score is not None for score in layer.exp_avg_ipt_B["default"])


def test_classes_at_peft_s_paths():
    import peft

    from peftkit.tuners import adamss

    for name in ("AdamssConfig", "AdamssModel", "AdamssLayer", "Linear"):
        assert hasattr(adamss, name) and hasattr(peft.tuners.adamss, name), name
    assert peftkit.AdamssConfig is adamss.AdamssConfig and peftkit.AdamssModel is adamss.AdamssModel
    assert peftkit.PeftType.ADAMSS.value == "ADAMSS"
