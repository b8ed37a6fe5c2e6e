"""X-LoRA against peft: LoRA experts loaded from folders, the classifier's scalings, forward, gradients
and generation equal peft's; the scalings API; files both ways (and peft 0.21.2's classifier-less save);
merging, adapter switching and mixed batches are clear errors."""

import copy
import json
import shutil
import warnings

import peft
import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import llama_inputs, tiny_llama
from tests.tuners import method_checks as checks

import peftkit
from peftkit.utils.warnings import AdapterLoadError, PeftWarning

GRAD_ATOL = 1e-5  # gradients of the same loss on the same weights (fp32)
EXPERT_TARGETS = (["q_proj", "v_proj"], ["q_proj", "down_proj"], ["embed_tokens", "v_proj"])


def _base():
    model = tiny_llama()
    model.config.use_cache = False
    return model


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    """Three LoRA experts (peftkit-saved, PEFT's format) on different modules, one of them the embedding."""
    root = tmp_path_factory.mktemp("experts")
    paths = {}
    for number, targets in enumerate(EXPERT_TARGETS):
        torch.manual_seed(number)
        config = peftkit.LoraConfig(r=4, target_modules=targets, init_lora_weights=False)
        peftkit.get_peft_model(_base(), config).save_pretrained(root / f"expert{number}")
        paths[str(number)] = str(root / f"expert{number}")
    return paths


def _config(lib, experts, count=2, **overrides):
    adapters = {k: experts[k] for k in list(experts)[:count]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lib.XLoraConfig(
            **{"task_type": "CAUSAL_LM", "hidden_size": 32, "adapters": adapters, **overrides}
        )


def _pair(experts, count=2, dtype=None, **overrides):
    """peft's and peftkit's X-LoRA on the same base, peft's classifier (perturbed) copied into ours."""
    base = _base() if dtype is None else _base().to(dtype)
    theirs = peft.get_peft_model(copy.deepcopy(base), _config(peft, experts, count, **overrides))
    with torch.no_grad():
        for param in theirs.base_model.internal_xlora_classifier.parameters():
            param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(3)).to(param.dtype))
    ours = peftkit.get_peft_model(copy.deepcopy(base), _config(peftkit, experts, count, **overrides))
    result = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return base, theirs.eval(), ours.eval()


CASES = {
    "dense_softmax": {},
    "layerwise_top1_depth2": {
        "layerwise_scalings": True,
        "top_k_lora": 1,
        "enable_softmax": False,
        "enable_softmax_topk": True,
        "xlora_depth": 2,
        "xlora_size": 16,
    },
    "three_experts_with_embedding_pass_value": {
        "count": 3,
        "scaling_pass_value": 0.5,
        "softmax_temperature": 0.5,
    },
}


@pytest.mark.parametrize("overrides", CASES.values(), ids=CASES.keys())
def test_forward_scalings_and_gradients_equal_peft(experts, overrides):
    overrides = dict(overrides)
    count = overrides.pop("count", 2)
    base, theirs, ours = _pair(experts, count, **overrides)
    inputs = llama_inputs()
    with torch.no_grad():
        expected = theirs(**inputs).logits
        assert (expected - base(**inputs).logits).abs().max() > 1e-3
        checks.assert_close(ours(**inputs).logits, expected, 1e-6, "logits")
    scalings = ours.get_latest_scalings()
    # the LoRA layers of all experts: q/v/down_proj in both decoder layers, and the embedding
    assert scalings.shape == (2, 7, 7 if count == 3 else 6, count)
    checks.assert_close(scalings, theirs.get_latest_scalings(), 1e-6, "scalings")
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    grads = []
    for model in (theirs, ours):
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and all("internal_xlora_classifier" in n for n in grads[0])
    for name, expected_grad in grads[0].items():
        checks.assert_close(grads[1][name], expected_grad, GRAD_ATOL, name)


def test_generate_equals_peft(experts):
    _, theirs, ours = _pair(experts)
    kwargs = {"max_new_tokens": 4, "do_sample": False}
    inputs = llama_inputs()
    assert torch.equal(ours.generate(**inputs, **kwargs), theirs.generate(**inputs, **kwargs))


def test_bf16_base_equals_peft(experts):
    _, theirs, ours = _pair(experts, dtype=torch.bfloat16)
    assert {n: p.dtype for n, p in ours.named_parameters()} == {
        n: p.dtype for n, p in theirs.named_parameters()
    }
    with torch.no_grad():
        inputs = llama_inputs()
        checks.assert_close(ours(**inputs).logits.float(), theirs(**inputs).logits.float(), 1e-6, "bf16")


def test_the_structure_and_names_are_peft_s(experts):
    _, theirs, ours = _pair(experts)
    assert type(ours.base_model).__name__ == "XLoraModel"
    assert list(ours.peft_config) == list(theirs.peft_config) == ["default", "0", "1"]
    assert ours.active_adapters == theirs.active_adapters == ["0", "1"]
    assert ours.get_base_model() is ours.base_model.lora_model.model
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == [
        "base_model.internal_xlora_classifier.layers.0.weight",
        "base_model.internal_xlora_classifier.layers.0.bias",
    ]


def test_scalings_api_as_peft(experts):
    _, theirs, ours = _pair(experts)
    inputs = llama_inputs()
    assert ours.get_latest_scalings() is None
    ours.enable_scalings_logging()
    ours(**inputs)
    ours(input_ids=inputs["input_ids"][:, :5])
    ours.disable_scalings_logging()
    ours(**inputs)  # not logged
    log = ours.get_scalings_log()
    assert [s.shape[1] for s in log] == [7, 5]
    log.clear()  # a copy: the log itself is kept
    buckets = ours.get_bucketed_scalings_log()
    assert sorted(buckets) == [5, 7] and buckets[7][0] == [0] and buckets[5][0] == [1]
    ours.clear_scalings_log()
    assert ours.get_scalings_log() == []
    for model in (theirs, ours):
        model.set_global_scaling_weight(2.5)
        model.set_topk_lora(1)
        model.set_scaling_pass_value(None)  # 1 / n_experts
    assert ours.get_global_scaling_weight() == 2.5 and ours.peft_config["default"].scaling_pass_value == 0.5
    with torch.no_grad():
        checks.assert_close(ours(**inputs).logits, theirs(**inputs).logits, 1e-6, "after the setters")
    with pytest.raises(ValueError, match="top_k_lora must be None or in 1..2"):
        ours.set_topk_lora(3)


def test_files_load_both_ways_and_the_save_is_self_contained(experts, tmp_path):
    own_experts = {k: shutil.copytree(v, tmp_path / "experts" / k) for k, v in experts.items()}
    base, theirs, ours = _pair({k: str(v) for k, v in own_experts.items()})
    inputs = llama_inputs()
    with torch.no_grad():
        expected = ours(**inputs).logits
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    ours_config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert ours_config == json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    assert sorted(load_file(tmp_path / "ours" / "adapter_model.safetensors")) == [
        "base_model.internal_xlora_classifier.layers.0.bias",
        "base_model.internal_xlora_classifier.layers.0.weight",
    ]
    loaded_by_peft = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    with torch.no_grad():
        checks.assert_close(loaded_by_peft(**inputs).logits, expected, 1e-6, "peftkit-saved, loaded by peft")
    # each expert copy is a plain LoRA adapter of the base model, for both libraries
    expert = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), experts["1"]).eval()
    for lib in (peft, peftkit):
        copied = lib.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours" / "1").eval()
        with torch.no_grad():
            checks.assert_close(copied(**inputs).logits, expert(**inputs).logits, 1e-6, "expert copy")
    # without the experts' original folders, peftkit loads the copies saved beside the classifier
    shutil.rmtree(tmp_path / "experts")
    loaded = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    with torch.no_grad():
        checks.assert_close(loaded(**inputs).logits, expected, 0.0, "peftkit-saved, loaded by peftkit")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_peft_s_save_lacks_the_classifier_and_loads_only_when_allowed(experts, tmp_path):
    """peft 0.21.2 saves X-LoRA without its classifier (its adapter-name filter drops `layers.0`, '0' being
    an expert's name) and with incomplete expert copies: loading it is a clear error, or with
    allow_missing_keys=True what peft does (experts from their folders, a freshly drawn classifier)."""
    base, theirs, _ = _pair(experts)
    theirs.save_pretrained(tmp_path)
    assert load_file(tmp_path / "adapter_model.safetensors") == {}
    with pytest.raises(AdapterLoadError, match="holds no tensors at all.*X-LoRA.*allow_missing_keys=True"):
        peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    with pytest.warns(PeftWarning, match="written by peft's X-LoRA save"):
        loaded = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, allow_missing_keys=True)
    reference = peftkit.get_peft_model(_base(), _config(peftkit, experts))
    expert_state = {k: v for k, v in reference.state_dict().items() if ".lora_" in k}
    for key, value in expert_state.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # `adapters=` names the experts' folders, as in peft
    renamed = peftkit.PeftModel.from_pretrained(
        copy.deepcopy(base),
        tmp_path,
        adapters={"a": experts["1"], "b": experts["0"]},
        allow_missing_keys=True,
    )
    assert renamed.base_model.xlora_config.adapters == {"a": experts["1"], "b": experts["0"]}


def test_disable_merge_switch_and_unload(experts):
    base, _, ours = _pair(experts)
    inputs = llama_inputs()
    with torch.no_grad():
        base_out = base(**inputs).logits
        with ours.disable_adapter():
            checks.assert_close(ours(**inputs).logits, base_out, checks.BASE_ATOL, "disabled")
        for call in (ours.merge_adapter, ours.merge_and_unload, ours.unmerge_adapter):
            with pytest.raises(ValueError, match="X-LoRA cannot be merged.*unload"):
                call()
        for call in (
            lambda: ours.set_adapter("0"),
            lambda: ours.delete_adapter("0"),
            lambda: ours.add_adapter("other", _config(peftkit, experts)),
        ):
            with pytest.raises(ValueError, match="one X-LoRA adapter"):
                call()
        assert list(ours.peft_config) == ["default", "0", "1"]
        with pytest.raises(ValueError, match="adapter_names=.*not supported with X-LoRA"):
            ours(**inputs, adapter_names=["0", "1"])
        unloaded = ours.unload()
        checks.assert_close(unloaded(**inputs).logits, base_out, checks.BASE_ATOL, "unload")
        assert not unloaded._forward_pre_hooks and not unloaded._forward_hooks


def test_training_lowers_the_loss(experts):
    torch.manual_seed(0)
    model = peftkit.get_peft_model(_base(), _config(peftkit, experts)).train()
    inputs = llama_inputs()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for _ in range(6):
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    trainable = peftkit.get_peft_model(_base(), _config(peftkit, experts, use_trainable_adapters=True))
    names = [n for n, p in trainable.named_parameters() if p.requires_grad]
    assert any(".lora_A.0." in n for n in names) and any("internal_xlora_classifier" in n for n in names)


def test_bad_inputs_are_clear_errors(experts, monkeypatch, tmp_path):
    model = tiny_llama()  # use_cache left on
    with pytest.raises(ValueError, match="`use_cache` must be False"):
        peftkit.get_peft_model(model, _config(peftkit, experts))
    assert not any("lora" in name for name, _ in model.named_modules())
    with pytest.raises(ValueError, match="hidden_size=64 differs from the model's hidden_size=32"):
        peftkit.get_peft_model(_base(), _config(peftkit, experts, hidden_size=64))
    with pytest.raises(ValueError, match="adapters is empty"):
        peftkit.get_peft_model(_base(), peftkit.XLoraConfig(hidden_size=32, adapters={}))
    with pytest.raises(ValueError, match="top_k_lora=3 exceeds the number of experts"):
        peftkit.get_peft_model(_base(), _config(peftkit, experts, top_k_lora=3))
    peftkit.get_peft_model(
        _base(), peftkit.IA3Config(target_modules=["v_proj"], feedforward_modules=[])
    ).save_pretrained(tmp_path / "ia3")
    with pytest.raises(ValueError, match="must be LoRA adapters.*IA3"):
        peftkit.get_peft_model(
            _base(), peftkit.XLoraConfig(hidden_size=32, adapters={"0": str(tmp_path / "ia3")})
        )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AdapterLoadError, match="X-LoRA expert at someone/lora-expert.*HF_HUB_OFFLINE"):
        peftkit.get_peft_model(
            _base(), peftkit.XLoraConfig(hidden_size=32, adapters={"0": "someone/lora-expert"})
        )
    for bad, match in (
        ({"xlora_depth": 0}, "xlora_depth must be a positive integer"),
        ({"top_k_lora": 0}, "top_k_lora must be a positive integer"),
        ({"softmax_temperature": 0.0}, "softmax_temperature must be positive"),
        ({"adapters": ["a"]}, "adapters must map expert names"),
    ):
        with pytest.raises(ValueError, match=match):
            peftkit.XLoraConfig(hidden_size=32, **{"adapters": {}, **bad})


def test_config_fields_and_defaults_are_peft_s():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checks.check_config_fields("XLoraConfig")
        theirs, ours = peft.XLoraConfig(), peftkit.XLoraConfig()
    assert (ours.hidden_size, ours.adapters) == (theirs.hidden_size, theirs.adapters) == (4096, {})


def test_truncated_file_and_low_cpu_mem_usage_load(experts, tmp_path):
    base, _, ours = _pair(experts)
    ours.save_pretrained(tmp_path)
    inputs = llama_inputs()
    loaded = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, low_cpu_mem_usage=True).eval()
    assert not any(t.is_meta for t in loaded.state_dict().values())
    with torch.no_grad():
        checks.assert_close(loaded(**inputs).logits, ours(**inputs).logits, 0.0, "low_cpu_mem_usage load")
    path = tmp_path / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    model = copy.deepcopy(base)
    with pytest.raises(AdapterLoadError, match=r"adapter_model\.safetensors.*truncated or corrupt"):
        peftkit.PeftModel.from_pretrained(model, tmp_path)
    assert not any(".lora_" in name for name, _ in model.named_parameters())
