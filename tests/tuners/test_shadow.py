"""ShadowPEFT against peft: the shadow backbone, the per-block injection and update, files both ways
(peft's "default"-keyed format), the auxiliary loss, generation with the dual cache, unload_shadow,
pretrained and projected shadow backbones, and the errors where the method cannot go."""

import copy
import json

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.conftest import (
    llama_inputs,
    perturb_adapter_weights,
    tiny_gpt2,
    tiny_llama,
    tiny_llama_config,
    tiny_llama_seq_cls,
)
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case

import peftkit
from peftkit.tuners.shadow import DetachedShadowModel, ShadowCache, ShadowLayer

METHOD = "ShadowConfig"
CAUSAL = {"shadow_dropout": 0.0}

CASES = {
    "llama_defaults_causal_lm": Case(tiny_llama, {}, task_type="CAUSAL_LM"),
    "llama_no_task": Case(tiny_llama, {"r": 4, "shadow_alpha": 0.5}),
    "llama_narrow_deep_shadow": Case(
        tiny_llama,
        {
            "shadow_hidden_size": 16,
            "shadow_num_attention_heads": 2,
            "shadow_intermediate_size": 24,
            "shadow_num_hidden_layers": 2,
            "update_hidden_size": 6,
            "init_weights": False,
        },
        task_type="CAUSAL_LM",
    ),
    "llama_one_block_own_embeddings": Case(
        lambda: tiny_llama(num_hidden_layers=3),
        {"target_modules": ["model.layers.1"], "share_embeddings": False},
        task_type="CAUSAL_LM",
    ),
    "gpt2_blocks": Case(tiny_gpt2, {"r": 4}, task_type="CAUSAL_LM"),
    "llama_seq_cls": Case(tiny_llama_seq_cls, {"r": 4}, task_type="SEQ_CLS"),
}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_no_task",
        merge=None,  # Shadow does not merge (tested below)
        training={"llama_causal_lm_no_dropout": Case(tiny_llama, CAUSAL, task_type="CAUSAL_LM")},
        bf16="llama_defaults_causal_lm",
        mixed_batch=None,  # refused with a clear error (tested below)
        low_cpu_mem_usage="llama_defaults_causal_lm",
        config_fields=False,  # tested below, with the prefix
    )
)


@pytest.mark.parametrize("case", ["llama_defaults_causal_lm", "llama_narrow_deep_shadow", "llama_seq_cls"])
def test_same_init_from_a_seed_as_peft(case):
    """The backbone, projection, head and per-block networks are created in peft's order: a seed gives
    the same tensors (exact)."""
    theirs_config, ours_config = checks.config_pair(METHOD, CASES[case])
    base = CASES[case].model_fn()
    torch.manual_seed(3)
    theirs = peft.get_peft_model(copy.deepcopy(base), theirs_config)
    torch.manual_seed(3)
    ours = peftkit.get_peft_model(copy.deepcopy(base), ours_config)
    theirs_state, ours_state = theirs.state_dict(), ours.state_dict()
    assert theirs_state.keys() == ours_state.keys()
    for key, value in theirs_state.items():
        assert torch.equal(ours_state[key], value), key


def _pair(case_name, seed=0):
    case = CASES[case_name]
    base = case.model_fn()
    theirs = checks.peft_model(METHOD, case, base, seed=seed)
    _, ours_config = checks.config_pair(METHOD, case)
    ours = peftkit.get_peft_model(copy.deepcopy(base), ours_config).eval()
    ours.load_state_dict(theirs.state_dict())
    return base, theirs, ours


@pytest.mark.parametrize("case", ["llama_defaults_causal_lm", "llama_narrow_deep_shadow", "llama_seq_cls"])
def test_loss_with_auxiliary_term_and_gradients_equal_peft(case):
    """With labels: the same loss (task loss + 0.05 * shadow loss), the same detached shadow loss, and the
    same gradients for every trainable tensor (1e-5)."""
    _, theirs, ours = _pair(case)
    inputs = llama_inputs()
    labels = torch.tensor([0, 2]) if case == "llama_seq_cls" else inputs["input_ids"]
    results = []
    for model in (theirs, ours):
        model.zero_grad()
        output = model(**inputs, labels=labels)
        output.loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        results.append((output.loss.detach(), output.shadow_loss, grads))
    (theirs_loss, theirs_shadow, theirs_grads), (ours_loss, ours_shadow, ours_grads) = results
    checks.assert_close(ours_loss, theirs_loss, 1e-5, "loss")
    checks.assert_close(ours_shadow, theirs_shadow, 1e-5, "shadow loss")
    assert ours.base_model.last_shadow_loss is ours_shadow and not ours_shadow.requires_grad
    assert ours_grads.keys() == theirs_grads.keys()
    assert any("shadow_backbone" in n for n in ours_grads)
    # the last block's update networks produce a state nothing reads: no gradient, in both libraries
    assert {n for n, g in ours_grads.items() if g is None} == {
        n for n, g in theirs_grads.items() if g is None
    }
    for name, grad in theirs_grads.items():
        if grad is not None:
            checks.assert_close(ours_grads[name], grad, 1e-5, f"gradient of {name}")


def test_auxiliary_loss_weight_zero_leaves_the_task_loss():
    config = peftkit.ShadowConfig(task_type="CAUSAL_LM", auxiliary_loss_weight=0.0)
    model = peftkit.get_peft_model(tiny_llama(), config)
    perturb_adapter_weights(model)
    model.eval()
    inputs = llama_inputs()
    with torch.no_grad():
        logits = model(**inputs).logits
        output = model(**inputs, labels=inputs["input_ids"])
    task_loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 128), inputs["input_ids"][:, 1:].reshape(-1)
    )
    checks.assert_close(output.loss, task_loss, 1e-5, "loss without the auxiliary term")
    assert output.shadow_loss is not None  # still reported for logging


def test_disable_unload_and_no_merge():
    base, _, model = _pair("llama_defaults_causal_lm")
    inputs = llama_inputs()
    with torch.no_grad():
        base_out = base(**inputs).logits
        assert (model(**inputs).logits - base_out).abs().max() > 1e-3
        with model.disable_adapter():
            checks.assert_close(model(**inputs).logits, base_out, checks.BASE_ATOL, "disable_adapter")
        for call in (model.merge_adapter, model.merge_and_unload):
            with pytest.raises(NotImplementedError, match="ShadowPEFT cannot be merged"):
                call()
        with pytest.raises(NotImplementedError, match="ShadowPEFT cannot be merged"):
            model.base_model.model.model.layers[0].merge()
        unloaded = model.unload()
        assert not any(isinstance(m, ShadowLayer) for m in unloaded.modules())
        checks.assert_close(unloaded(**inputs).logits, base_out, checks.BASE_ATOL, "unload")


def test_generate_with_the_dual_cache_equals_recomputing_every_step():
    """Cached greedy generation (a ShadowCache carries both caches between steps) gives the tokens that
    recomputing the whole sequence at each step gives, and peft's uncached forward agrees with ours.
    (peft's own generate is not the reference: on transformers >= 5.24 its hook looks for the cache
    under the old name `past_key_values`, so its shadow backbone restarts from the last token each step.)"""
    _, theirs, ours = _pair("llama_defaults_causal_lm", seed=1)
    prompt = llama_inputs(batch=1)["input_ids"]
    with torch.no_grad():
        generated = ours.generate(input_ids=prompt, max_new_tokens=6, do_sample=False)
        sequences = {}
        for name, model in (("theirs", theirs), ("ours", ours)):
            tokens = prompt
            for _ in range(6):
                logits = model(input_ids=tokens, use_cache=False).logits
                tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            sequences[name] = tokens
        output = ours(input_ids=prompt, use_cache=True)
        # beam search reorders and repeats both caches: with the cache it finds what recomputing finds
        batch = llama_inputs(batch=2)  # the first row is left-padded
        beams = {
            use: ours.generate(**batch, max_new_tokens=4, num_beams=2, do_sample=False, use_cache=use)
            for use in (True, False)
        }
    assert torch.equal(sequences["ours"], sequences["theirs"])
    assert torch.equal(generated, sequences["ours"]), (generated, sequences["ours"])
    assert torch.equal(beams[True], beams[False])
    cache = checks_cache(output)
    assert isinstance(cache, ShadowCache) and cache.shadow is not None
    assert cache.get_seq_length() == prompt.shape[1] == cache.shadow.get_seq_length()


def checks_cache(output):
    from peftkit.utils.cache_names import output_cache

    return output_cache(output)


def test_unload_shadow_runs_the_shadow_network_standalone(tmp_path):
    """unload_shadow() gives head(projection(backbone(x))) as peft's does (1e-5); it generates, and a copy
    saves a complete checkpoint (with the embedding table the backbone shared)."""
    _, theirs, ours = _pair("llama_narrow_deep_shadow")
    inputs = llama_inputs()
    theirs_detached = theirs.base_model.unload_shadow()
    ours_detached = ours.base_model.unload_shadow()
    assert isinstance(ours_detached, DetachedShadowModel)
    with torch.no_grad():
        expected = theirs_detached(**inputs).logits
        checks.assert_close(ours_detached(**inputs).logits, expected, 1e-5, "detached shadow model")
        tokens = ours_detached.generate(input_ids=inputs["input_ids"][:1], max_new_tokens=3, do_sample=False)
    assert tokens.shape == (1, inputs["input_ids"].shape[1] + 3)
    _, _, shared = _pair("llama_defaults_causal_lm")
    copied = shared.base_model.unload_shadow(copy=True)
    copied.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert any("embed_tokens" in key for key in saved)
    with torch.no_grad():
        checks.assert_close(
            copied(**inputs).logits, shared.base_model.unload_shadow()(**inputs).logits, 0.0, "copy=True"
        )


def test_seq_cls_unload_shadow_classifies():
    _, theirs, ours = _pair("llama_seq_cls")
    inputs = llama_inputs()
    with torch.no_grad():
        expected = theirs.base_model.unload_shadow()(**inputs, labels=torch.tensor([1, 2]))
        actual = ours.base_model.unload_shadow()(**inputs, labels=torch.tensor([1, 2]))
    checks.assert_close(actual.logits, expected.logits, 1e-5, "detached classifier logits")
    checks.assert_close(actual.loss, expected.loss, 1e-5, "detached classifier loss")


def test_several_adapters_one_active_and_named_default_in_files(tmp_path):
    base = tiny_llama()
    model = peftkit.get_peft_model(copy.deepcopy(base), peftkit.ShadowConfig(task_type="CAUSAL_LM"))
    model.add_adapter("other", peftkit.ShadowConfig(task_type="CAUSAL_LM", r=4))
    assert not any("other" in n for n, p in model.named_parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="exactly one active adapter"):
        model.base_model.set_adapter(["default", "other"])
    model.set_adapter("other")
    assert all("other" in n for n, p in model.named_parameters() if p.requires_grad and "shadow_" in n)
    perturb_adapter_weights(model, seed=4)
    model.eval()
    inputs = llama_inputs()
    with torch.no_grad():
        other_out = model(**inputs).logits
        model.set_adapter("default")
        default_out = model(**inputs).logits
    assert (other_out - default_out).abs().max() > 1e-3
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "other" / "adapter_model.safetensors")
    assert saved and all(".default." in key for key in saved)  # peft writes "default" whatever the name
    theirs = peft.PeftModel.from_pretrained(
        copy.deepcopy(base), tmp_path / "other", adapter_name="mine"
    ).eval()
    with torch.no_grad():
        checks.assert_close(theirs(**inputs).logits, other_out, checks.ROUNDTRIP_ATOL, "peft loads 'other'")
    model.load_adapter(tmp_path / "other", adapter_name="again")  # "default" keys into any name
    model.set_adapter("again")
    with torch.no_grad():
        checks.assert_close(model(**inputs).logits, other_out, 0.0, "reloaded as 'again'")
    model.set_adapter("default")
    model.delete_adapter("again")
    model.delete_adapter("other")
    assert "other" not in model.base_model.shadow_backbone
    with torch.no_grad():
        checks.assert_close(model(**inputs).logits, default_out, 0.0, "after deleting the other adapter")


def test_an_adapter_on_fewer_blocks_rides_its_own_blocks():
    """Adapter "late" wraps only the last block while "default" wraps all: switched to "late", the shadow
    state enters and leaves at that block, as in a model with "late" alone (exact). (peft starts the
    state at the first wrapped block of any adapter, so there "late" silently does nothing.)"""
    base = tiny_llama()
    late = peftkit.ShadowConfig(task_type="CAUSAL_LM", target_modules=["model.layers.1"])
    alone = peftkit.get_peft_model(copy.deepcopy(base), copy.deepcopy(late))
    perturb_adapter_weights(alone, seed=2)
    both = peftkit.get_peft_model(copy.deepcopy(base), peftkit.ShadowConfig(task_type="CAUSAL_LM"))
    both.add_adapter("late", late)
    both_state = both.state_dict()
    for key, value in alone.state_dict().items():
        if ".default." in key:  # the adapter's tensors (the base model is the same)
            both_state[key.replace(".default.", ".late.")].copy_(value)
    both.set_adapter("late")
    alone.eval(), both.eval()
    inputs = llama_inputs()
    with torch.no_grad():
        expected = alone(**inputs).logits
        assert (expected - base(**inputs).logits).abs().max() > 1e-3
        checks.assert_close(both(**inputs).logits, expected, 0.0, "adapter on the last block only")


def test_inference_mode_freezes_the_shadow_backbone(tmp_path):
    """A loaded (inference-mode) adapter trains nothing, the shadow backbone included (peft leaves the
    backbone trainable there: a deliberate difference)."""
    model = peftkit.get_peft_model(tiny_llama(), peftkit.ShadowConfig(task_type="CAUSAL_LM"))
    model.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert not any(p.requires_grad for p in loaded.parameters())
    trainable = peftkit.PeftModel.from_pretrained(tiny_llama(), tmp_path, is_trainable=True)
    assert any(p.requires_grad for n, p in trainable.named_parameters() if "shadow_backbone" in n)


def test_pretrained_and_projected_shadow_backbones_equal_peft(tmp_path):
    """shadow_model names a folder: a plain transformers backbone, or a projected checkpoint (backbone +
    trained projection to the base width). Both libraries build the same adapter from it (1e-5)."""
    from transformers import LlamaModel

    torch.manual_seed(11)
    LlamaModel(tiny_llama_config(num_hidden_layers=1)).save_pretrained(tmp_path / "plain")
    narrow = tiny_llama_config(
        num_hidden_layers=1, hidden_size=16, num_attention_heads=2, num_key_value_heads=1
    )
    projected = tmp_path / "projected"
    projected.mkdir()
    inner = {**narrow.to_dict(), "model_type": "llama"}
    (projected / "config.json").write_text(
        json.dumps({"model_type": "causal_lm_with_hidden_projection", "shadow_model_config": inner})
    )
    weights = {f"shadow_model.{k}": v.contiguous() for k, v in LlamaModel(narrow).state_dict().items()}
    weights["shadow_hidden_projection.weight"] = torch.randn(32, 16)
    save_file(weights, projected / "model.safetensors")
    for folder in ("plain", "projected"):
        case = Case(tiny_llama, {"shadow_model": str(tmp_path / folder)}, task_type="CAUSAL_LM")
        base = case.model_fn()
        theirs = checks.peft_model(METHOD, case, base)
        _, ours_config = checks.config_pair(METHOD, case)
        ours = peftkit.get_peft_model(copy.deepcopy(base), ours_config).eval()
        assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
        ours_trainable = sorted(n for n, p in ours.named_parameters() if p.requires_grad)
        theirs_trainable = sorted(n for n, p in theirs.named_parameters() if p.requires_grad)
        assert ours_trainable == theirs_trainable and not any("embed_tokens" in n for n in ours_trainable)
        ours.load_state_dict(theirs.state_dict())
        with torch.no_grad():
            checks.assert_close(ours(**llama_inputs()).logits, theirs(**llama_inputs()).logits, 1e-5, folder)
    with pytest.raises(ValueError, match="mirror-only overrides: shadow_hidden_size"):
        peftkit.ShadowConfig(shadow_model=str(tmp_path / "plain"), shadow_hidden_size=8)


def test_mixed_batches_and_bad_targets_are_clear_errors():
    model = peftkit.get_peft_model(tiny_llama(), peftkit.ShadowConfig(task_type="CAUSAL_LM")).eval()
    with pytest.raises(ValueError, match="does not support mixed-adapter batches"):
        model(**llama_inputs(), adapter_names=["default", "__base__"])
    gapped = peftkit.ShadowConfig(target_modules=["model.layers.0", "model.layers.2"])
    with pytest.raises(ValueError, match=r"consecutive decoder blocks.*leaves out blocks \[1\]"):
        peftkit.get_peft_model(tiny_llama(num_hidden_layers=3), gapped)
    with pytest.raises(ValueError, match="`r` should be a positive integer"):
        peftkit.ShadowConfig(r=0)
    with pytest.raises(ValueError, match="shadow_dropout"):
        peftkit.ShadowConfig(shadow_dropout=2.0)
    seq_cls = peftkit.get_peft_model(tiny_llama_seq_cls(), peftkit.ShadowConfig(task_type="SEQ_CLS"))
    with pytest.raises(ValueError, match="multiple adapters when any adapter uses sequence classification"):
        seq_cls.add_adapter("other", peftkit.ShadowConfig(task_type="SEQ_CLS"))


def test_diffusion_transformers_are_a_clear_error():
    class FluxLike(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer_blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4)])

    with pytest.raises(NotImplementedError, match="Diffusers transformers"):
        peftkit.get_peft_model(FluxLike(), peftkit.ShadowConfig(target_modules=["transformer_blocks.0"]))


def test_no_default_target_table_and_config_fields_are_peft_s():
    from peftkit.mapping import PEFT_TYPE_TO_PREFIX_MAPPING

    assert PEFT_TYPE_TO_PREFIX_MAPPING[peftkit.PeftType.SHADOW] == "shadow_"
    checks.check_config_fields(METHOD)
