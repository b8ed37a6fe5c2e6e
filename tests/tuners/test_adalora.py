"""AdaLoRA against peft: files move both ways, same names and files, merge/unmerge/disable, the
orthogonality regulariser in the loss, rank allocation step by step, and pruned adapters on disk."""

import copy
import json

import peft
import pytest
import torch
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_gpt2, tiny_llama
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case, conv_case

import peftkit

METHOD = "AdaLoraConfig"
SCHEDULE = {"init_r": 4, "target_r": 2, "total_step": 10}

CASES = {
    "llama_q_v": Case(tiny_llama, {"target_modules": ["q_proj", "v_proj"], **SCHEDULE}),
    "llama_defaults_dropout": Case(
        tiny_llama, {"lora_dropout": 0.1, "lora_alpha": 6, **SCHEDULE}, task_type="CAUSAL_LM"
    ),
    "gpt2_conv1d_defaults": Case(tiny_gpt2, SCHEDULE, task_type="CAUSAL_LM"),
    "conv_layers": conv_case(
        {"target_modules": ["lin", "conv2d", "conv2d_1x1"], "init_r": 3, "target_r": 1, "total_step": 10}
    ),
}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v",
        no_weighted=None,  # AdaLoRA's add_weighted_adapter is a TypeError naming AdaLoRA (tested below)
        mixed_batch=None,
    )
)


def test_add_weighted_adapter_is_a_type_error_naming_adalora():
    model = peftkit.get_peft_model(tiny_llama(), peftkit.AdaLoraConfig(**CASES["llama_q_v"].config))
    with pytest.raises(TypeError, match="AdaLoraModel does not support add_weighted_adapter"):
        model.add_weighted_adapter(["default"], [1.0], "combined")


def test_config_errors_as_peft():
    with pytest.raises(ValueError, match="`total_step` is None"):
        peftkit.AdaLoraConfig()
    with pytest.raises(ValueError, match="don't allow for a budgeting phase"):
        peftkit.AdaLoraConfig(total_step=10, tinit=5, tfinal=5)
    with pytest.raises(ValueError, match="does not support DoRA"):
        peftkit.AdaLoraConfig(total_step=10, use_dora=True)
    with pytest.warns(peftkit.PeftWarning, match="`r` is not used in AdaLora"):
        peftkit.AdaLoraConfig(total_step=10, r=4)


def test_only_one_trainable_adapter():
    model = peftkit.get_peft_model(tiny_llama(), peftkit.AdaLoraConfig(**CASES["llama_q_v"].config))
    with pytest.raises(ValueError, match="supports only 1 trainable adapter"):
        model.add_adapter("other", peftkit.AdaLoraConfig(**CASES["llama_q_v"].config))
    model.add_adapter("frozen", peftkit.AdaLoraConfig(**CASES["llama_q_v"].config, inference_mode=True))
    assert model.base_model.trainable_adapter_name == "default"


def _twins(config: dict, seed: int = 0):
    """peft and peftkit CausalLM models with the same (perturbed) AdaLoRA adapter."""
    base = tiny_llama()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.AdaLoraConfig(task_type="CAUSAL_LM", **config))
    perturb_adapter_weights(theirs, seed=seed)
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.AdaLoraConfig(task_type="CAUSAL_LM", **config))
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not missing and not unexpected
    return base, theirs, ours


@pytest.mark.parametrize("training", [True, False])
def test_orthogonality_regulariser_is_added_to_the_loss_as_peft(training):
    """loss = LM loss + orth_reg_weight * mean ||A A^T - I||_F, ||B^T B - I||_F (peft adds it in eval too);
    equal to peft's loss within 1e-5, and the regulariser is what makes the difference."""
    _, theirs, ours = _twins({"target_modules": ["q_proj", "v_proj"], "orth_reg_weight": 0.3, **SCHEDULE})
    inputs = llama_inputs()
    labels = inputs["input_ids"]
    theirs.train(training)
    ours.train(training)
    with torch.no_grad():
        expected = theirs(**inputs, labels=labels).loss
        actual = ours(**inputs, labels=labels).loss
        plain = ours.get_base_model()(**inputs, labels=labels).loss
        reg = ours.base_model.orthogonal_regularization("default")
    checks.assert_close(actual, expected, 1e-5, "loss with the regulariser")
    checks.assert_close(actual, plain + 0.3 * reg, 1e-6, "LM loss + weight * regulariser")
    assert reg > 1e-2


def test_inference_adapter_loss_has_no_regulariser(tmp_path):
    """A loaded (inference-mode) adapter trains nothing, so no regulariser (peft 0.21 raises AttributeError)."""
    _, _, ours = _twins({"target_modules": ["q_proj"], **SCHEDULE})
    ours.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(tiny_llama(), tmp_path)
    inputs = llama_inputs()
    with torch.no_grad():
        loss = loaded(**inputs, labels=inputs["input_ids"]).loss
        plain = loaded.get_base_model()(**inputs, labels=inputs["input_ids"]).loss
    checks.assert_close(loss, plain, 0.0, "no regulariser")


def _train_both(config: dict, steps: int):
    """Train the twins identically (AdamW, their own update_and_allocate); return them and, per step, the
    kept triplets of each (peft's first)."""
    _, theirs, ours = _twins(config)
    inputs = llama_inputs()
    pairs = []
    for model in (theirs, ours):
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        pairs.append((model, torch.optim.AdamW(params, lr=0.05)))
    history = []
    for step in range(steps):
        masks = []
        for model, optimizer in pairs:
            loss = model(**inputs, labels=inputs["input_ids"]).loss
            loss.backward()
            optimizer.step()
            model.base_model.update_and_allocate(step)
            optimizer.zero_grad()
            masks.append(_kept(model))
        history.append(masks)
    return theirs, ours, history


def _kept(model) -> list[list[bool]]:
    return [
        (m.lora_E["default"].detach().flatten() != 0).tolist()
        for m in model.modules()
        if hasattr(m, "lora_E") and "default" in m.lora_E
    ]


def test_rank_allocation_matches_peft_step_by_step_and_fits_the_budget(tmp_path):
    """Trained the same way, peftkit masks the same triplets as peft at every step; the final ranks sum to
    target_r * layers; the saved adapter (pruned) reloads in peft with the same logits (1e-5)."""
    config = {
        "target_modules": ["q_proj", "v_proj", "up_proj"],
        "init_r": 4,
        "target_r": 2,
        "total_step": 12,
        "tinit": 2,
        "tfinal": 3,
        "deltaT": 2,
    }
    theirs, ours, history = _train_both(config, steps=12)
    for step, (theirs_mask, ours_mask) in enumerate(history):
        assert ours_mask == theirs_mask, f"step {step}"
    kept = [sum(layer) for layer in ours_mask]
    assert sum(kept) == 2 * len(kept), kept
    assert kept != [2] * len(kept), "the budget is shared unevenly between layers"
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    saved = [json.loads((tmp_path / s / "adapter_config.json").read_text()) for s in ("ours", "theirs")]
    assert saved[0]["rank_pattern"] == saved[1]["rank_pattern"]
    assert set(saved[0]["rank_pattern"]) == {
        k.removesuffix(".default") for k in ours.peft_config["default"].rank_pattern
    }
    reloaded = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path / "ours").eval()
    inputs = llama_inputs()
    with torch.no_grad():
        expected = ours.eval()(**inputs).logits
        checks.assert_close(reloaded(**inputs).logits, expected, checks.ROUNDTRIP_ATOL, "peftkit -> peft")
        ours_reloaded = peftkit.PeftModel.from_pretrained(tiny_llama(), tmp_path / "theirs").eval()
        checks.assert_close(
            ours_reloaded(**inputs).logits,
            theirs.eval()(**inputs).logits,
            checks.ROUNDTRIP_ATOL,
            "peft -> peftkit",
        )
    ranks = [
        m.r["default"] for m in ours_reloaded.modules() if isinstance(m, peftkit.tuners.adalora.AdaLoraLayer)
    ]
    assert ranks == kept


def test_pruned_adapter_reloads_with_its_ranks_and_saves_again(tmp_path):
    """A pruned peftkit adapter: each layer has the kept rank (rank 0 allowed), ranknum keeps init_r,
    and saving the loaded adapter writes the same tensors and rank_pattern again."""
    _, _, ours = _twins({"target_modules": ["q_proj", "v_proj"], **SCHEDULE})
    pattern = {
        "model.layers.0.self_attn.q_proj.lora_E.default": [True, False, False, True],
        "model.layers.0.self_attn.v_proj.lora_E.default": [False, False, False, False],
        "model.layers.1.self_attn.q_proj.lora_E.default": [True, True, True, False],
        "model.layers.1.self_attn.v_proj.lora_E.default": [False, True, False, False],
    }
    ours.peft_config["default"].rank_pattern = pattern
    ours.base_model.update_and_allocate(11)  # past the schedule: mask with the final pattern
    ours.save_pretrained(tmp_path / "first")
    loaded = peftkit.PeftModel.from_pretrained(tiny_llama(), tmp_path / "first").eval()
    layers = [m for m in loaded.modules() if isinstance(m, peftkit.tuners.adalora.AdaLoraLayer)]
    assert [m.r["default"] for m in layers] == [2, 0, 3, 1]
    assert [m.ranknum["default"].item() for m in layers] == [4.0, 0.0, 4.0, 4.0]
    inputs = llama_inputs()
    with torch.no_grad():
        checks.assert_close(
            loaded(**inputs).logits, ours.eval()(**inputs).logits, checks.ROUNDTRIP_ATOL, "reload"
        )
    loaded.save_pretrained(tmp_path / "second")
    from safetensors.torch import load_file

    first, second = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("first", "second"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    configs = [json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("first", "second")]
    assert configs[0]["rank_pattern"] == configs[1]["rank_pattern"]


def test_update_and_allocate_needs_a_trainable_adapter(tmp_path):
    _, _, ours = _twins({"target_modules": ["q_proj"], **SCHEDULE})
    ours.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(tiny_llama(), tmp_path)
    with pytest.raises(ValueError, match="every adapter is in inference mode.*is_trainable=True"):
        loaded.base_model.update_and_allocate(0)
