"""PeftModel and the task classes: construction, heads, dtypes, generate, status, fall-through."""

import copy
import dataclasses

import pytest
import torch
from tests.conftest import (
    llama_inputs,
    make_pair,
    perturb_adapter_weights,
    tiny_bert,
    tiny_llama,
    tiny_t5,
    trainable_names,
)

import peftkit
from peftkit import LoraConfig, get_peft_model


@pytest.mark.parametrize(
    "task, model_fn, head",
    [
        ("SEQ_CLS", lambda: tiny_bert(task="seq_cls"), "classifier"),
        ("TOKEN_CLS", lambda: tiny_bert(task="token_cls"), "classifier"),
        ("QUESTION_ANS", lambda: tiny_bert(task="qa"), "qa_outputs"),
        ("FEATURE_EXTRACTION", lambda: tiny_bert(task="feature"), None),
        ("CAUSAL_LM", tiny_llama, None),
        ("SEQ_2_SEQ_LM", tiny_t5, None),
    ],
)
def test_task_classes_match_peft(task, model_fn, head):
    import peft

    kwargs = {} if task != "CAUSAL_LM" else {"target_modules": ["q_proj", "v_proj"]}
    _base, theirs, ours = make_pair(model_fn, kwargs, task_type=task)
    assert type(ours).__name__ == type(theirs).__name__
    assert isinstance(ours, peftkit.PeftModel)
    assert trainable_names(ours) == trainable_names(theirs)
    if head:
        assert any(f"{head}.modules_to_save.default" in n for n in trainable_names(ours))
        assert head in ours.peft_config["default"].modules_to_save
    inputs = llama_inputs()
    if task == "SEQ_2_SEQ_LM":
        inputs = {**inputs, "decoder_input_ids": inputs["input_ids"][:, :3]}
    with torch.no_grad():
        out_theirs, out_ours = theirs(**inputs), ours(**inputs)
    key = {"QUESTION_ANS": "start_logits", "FEATURE_EXTRACTION": "last_hidden_state"}.get(task, "logits")
    torch.testing.assert_close(out_ours[key], out_theirs[key], atol=1e-6, rtol=0)
    assert peft.PeftModel  # the oracle ran


def test_forward_passes_labels_and_returns_loss_like_peft():
    _, theirs, ours = make_pair(tiny_llama, {"target_modules": ["q_proj"]}, task_type="CAUSAL_LM")
    inputs = llama_inputs()
    labels = inputs["input_ids"].clone()
    with torch.no_grad():
        loss_theirs = theirs(**inputs, labels=labels).loss
        loss_ours = ours(**inputs, labels=labels).loss
    torch.testing.assert_close(loss_ours, loss_theirs, atol=1e-6, rtol=0)


def test_causal_generate_follows_adapter_and_matches_peft():
    _, theirs, ours = make_pair(tiny_llama, {"target_modules": "all-linear"}, task_type="CAUSAL_LM")
    inputs = llama_inputs(batch=2, length=5)
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    expected = theirs.generate(**inputs, **settings)
    actual = ours.generate(**inputs, **settings)
    assert torch.equal(actual, expected)
    with ours.disable_adapter():
        base_tokens = ours.generate(**inputs, **settings)
    assert not torch.equal(base_tokens, actual)


def test_seq2seq_generate_matches_peft():
    _, theirs, ours = make_pair(tiny_t5, {}, task_type="SEQ_2_SEQ_LM")
    inputs = llama_inputs(batch=2, length=6)
    settings = dict(max_new_tokens=5, do_sample=False)
    assert torch.equal(ours.generate(**inputs, **settings), theirs.generate(**inputs, **settings))


def test_print_trainable_parameters_matches_peft(capsys):
    _, theirs, ours = make_pair(tiny_llama, {"target_modules": "all-linear", "modules_to_save": ["lm_head"]})
    theirs.print_trainable_parameters()
    expected = capsys.readouterr().out
    ours.print_trainable_parameters()
    assert capsys.readouterr().out == expected
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()


def test_attribute_fall_through_to_base_model():
    base = tiny_llama()
    model = get_peft_model(base, LoraConfig(target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert model.config is base.config
    assert model.generation_config is base.generation_config
    assert model.get_input_embeddings() is base.get_input_embeddings()
    assert model.get_base_model() is base
    assert model.base_model.model is base
    assert model.active_peft_config is model.peft_config["default"]
    assert base.peft_config is model.peft_config
    with pytest.raises(AttributeError):
        model.no_such_attribute  # noqa: B018


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_adapter_dtype_keeps_fp32_adapters_on_half_base(dtype):
    base = tiny_llama().to(dtype)
    model = get_peft_model(copy.deepcopy(base), LoraConfig(target_modules="all-linear", use_dora=True))
    adapter = [p for n, p in model.named_parameters() if "lora_" in n]
    assert adapter and all(p.dtype == torch.float32 for p in adapter)
    assert model.base_model.model.lm_head.weight.dtype == dtype
    kept = get_peft_model(
        copy.deepcopy(base), LoraConfig(target_modules=["q_proj"]), autocast_adapter_dtype=False
    )
    assert all(p.dtype == dtype for n, p in kept.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("use_dora", [False, True])
def test_half_precision_forward_backward_every_layer_kind(dtype, use_dora):
    from tests.conftest import conv_net

    targets = ["conv1d", "conv2d", "conv2d_1x1", "conv3d", "lin"] + ([] if use_dora else ["emb"])
    model = get_peft_model(conv_net().to(dtype), LoraConfig(target_modules=targets, use_dora=use_dora))
    perturb_adapter_weights(model)
    model.train()
    out = model(torch.randint(0, 20, (2, 8)))
    assert out.dtype == dtype and torch.isfinite(out).all()
    out.float().sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_layer_and_model_status_match_peft():
    import peft

    _, theirs, ours = make_pair(tiny_llama, {"target_modules": ["q_proj", "v_proj"]})
    theirs.add_adapter("b", peft.LoraConfig(target_modules=["q_proj"]))
    ours.add_adapter("b", LoraConfig(target_modules=["q_proj"]))
    for t, o in zip(peft.get_layer_status(theirs), peftkit.get_layer_status(ours)):
        assert dataclasses.asdict(t) == dataclasses.asdict(o)
    assert dataclasses.asdict(peft.get_model_status(theirs)) == dataclasses.asdict(
        peftkit.get_model_status(ours)
    )
    ours.merge_adapter()
    assert peftkit.get_model_status(ours).merged_adapters == ["default"]


def test_causal_lm_task_on_model_without_lm_head_warns():
    with pytest.warns(peftkit.PeftWarning, match="no language-modeling head"):
        get_peft_model(tiny_bert(task="feature"), LoraConfig(task_type="CAUSAL_LM"))


def test_inference_mode_config_freezes_everything():
    model = get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj"], inference_mode=True))
    assert trainable_names(model) == []


def test_training_lowers_loss():
    model = get_peft_model(
        tiny_llama(), LoraConfig(target_modules="all-linear", r=4, lora_dropout=0.1, task_type="CAUSAL_LM")
    )
    model.train()
    inputs = llama_inputs(batch=4, length=12)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    losses = []
    for _ in range(15):
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.2
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)


def test_task_ids_reach_only_a_tuner_that_takes_them(monkeypatch):
    """`BaseTuner.takes_task_ids`: the task classes drop `task_ids` for tuners that do not route by task
    (as peft does), and hand it to the tuner's forward and generate for one that does (Poly)."""
    model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    task_ids = torch.tensor([0, 1])
    inputs = llama_inputs()
    model(**inputs, task_ids=task_ids)  # dropped: the Llama would reject the keyword
    seen = []
    tuner = model.base_model
    monkeypatch.setattr(type(tuner), "takes_task_ids", True)
    monkeypatch.setattr(tuner, "forward", lambda *a, task_ids=None, **k: seen.append(("forward", task_ids)))
    monkeypatch.setattr(tuner, "generate", lambda *a, task_ids=None, **k: seen.append(("generate", task_ids)))
    model(**inputs, task_ids=task_ids)
    model.generate(**inputs, task_ids=task_ids)
    assert seen == [("forward", task_ids), ("generate", task_ids)]
