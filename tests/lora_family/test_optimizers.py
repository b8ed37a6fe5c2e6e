"""LoRA+ and LoRA-FA optimizers against peft's (`peft.optimizers`)."""

import inspect

import pytest
import torch
from tests.conftest import llama_inputs, tiny_bert, tiny_llama
from tests.lora_family.helpers import both

import peftkit
from peftkit.optimizers import create_lorafa_optimizer, create_loraplus_optimizer


def _groups_by_name(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return [
        (g["lr"], g["weight_decay"], sorted(names[id(p)] for p in g["params"]))
        for g in optimizer.param_groups
    ]


def test_signatures_match_peft():
    from peft import optimizers

    for ours, theirs in (
        (create_loraplus_optimizer, optimizers.create_loraplus_optimizer),
        (create_lorafa_optimizer, optimizers.create_lorafa_optimizer),
    ):
        a, b = inspect.signature(ours), inspect.signature(theirs)
        assert list(a.parameters) == list(b.parameters)
        assert [p.default for p in a.parameters.values()] == [p.default for p in b.parameters.values()]
        assert [p.kind for p in a.parameters.values()] == [p.kind for p in b.parameters.values()]


@pytest.mark.parametrize(
    "model_fn, config, extra",
    [
        (
            tiny_llama,
            dict(r=4, target_modules=["q_proj", "v_proj", "embed_tokens"], modules_to_save=["lm_head"]),
            {},
        ),
        (
            tiny_bert,
            dict(
                r=4,
                target_modules=["query", "value"],
                bias="lora_only",
                modules_to_save=["LayerNorm"],
                use_dora=True,
            ),
            dict(loraplus_weight_decay=0.2, loraplus_lr_embedding=1e-3),
        ),
        (
            tiny_bert,
            dict(r=4, target_modules=["query", "value"], lora_bias=True, modules_to_save=["classifier"]),
            {},
        ),
    ],
)
def test_loraplus_groups_equal_peft(model_fn, config, extra):
    from peft.optimizers import create_loraplus_optimizer as theirs_fn

    theirs, ours = both(model_fn(), **config)
    opt_theirs = theirs_fn(
        theirs, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16, weight_decay=0.1, **extra
    )
    opt_ours = create_loraplus_optimizer(
        ours, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16, weight_decay=0.1, **extra
    )
    assert _groups_by_name(ours, opt_ours) == _groups_by_name(theirs, opt_theirs)
    assert opt_ours.defaults == opt_theirs.defaults


def test_loraplus_documented_learning_rates():
    ours = peftkit.get_peft_model(
        tiny_llama(), peftkit.LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"], bias="lora_only")
    )
    optimizer = create_loraplus_optimizer(
        ours, torch.optim.SGD, lr=0.01, loraplus_lr_ratio=8, loraplus_lr_embedding=3e-4
    )
    (lr_a, _, a), (lr_e, _, e), (lr_b, _, b), (lr_b0, wd_b0, _) = _groups_by_name(ours, optimizer)
    assert lr_a == 0.01 and all("lora_A" in n for n in a) and a
    assert lr_e == 3e-4 and all("lora_embedding" in n for n in e) and len(e) == 2
    assert lr_b == pytest.approx(0.08) and all("lora_B" in n for n in b) and b
    assert lr_b0 == pytest.approx(0.08) and wd_b0 == 0.0
    with pytest.raises(TypeError, match="loraplus_lr_ratio"):
        create_loraplus_optimizer(ours, torch.optim.SGD, lr=0.01)


def _lorafa_run(lib, model, steps=3, **kwargs):
    fn = (
        create_lorafa_optimizer
        if lib == "ours"
        else __import__("peft.optimizers", fromlist=["x"]).create_lorafa_optimizer
    )
    optimizer = fn(model, r=2, lora_alpha=kwargs.pop("lora_alpha", 4), lr=1e-2, **kwargs)
    inputs = llama_inputs()
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**inputs).logits.mul(torch.randn(1, generator=gen)).pow(2).mean().backward()
        optimizer.step()
    return optimizer


@pytest.mark.parametrize("lora_alpha", [4, 3])
def test_lorafa_keeps_A_and_updates_B_as_peft(lora_alpha):
    theirs, ours = both(
        tiny_llama(),
        r=2,
        lora_alpha=lora_alpha,
        target_modules=["q_proj", "v_proj"],
        bias="lora_only",
        rank_pattern={"v_proj": 4},
    )
    ours.load_state_dict(theirs.state_dict())
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    opt_theirs = _lorafa_run("peft", theirs, lora_alpha=lora_alpha, weight_decay=0.05)
    opt_ours = _lorafa_run("ours", ours, lora_alpha=lora_alpha, weight_decay=0.05)
    after_ours = dict(ours.named_parameters())
    after_theirs = dict(theirs.named_parameters())
    moved = 0
    for name, value in before.items():
        if "lora_A" in name:
            assert torch.equal(after_ours[name], value), name  # A never changes
            assert not after_ours[name].requires_grad
        if "lora_B" in name:
            moved += int(not torch.equal(after_ours[name], value))
        # same algorithm, same bf16 projection: equal to peft up to float rounding order
        assert (after_ours[name] - after_theirs[name]).abs().max() < 1e-6, name
    assert moved == 4
    assert sorted(opt_ours.state) == sorted(opt_theirs.state)  # state keyed by name, as in peft
    group_ours, group_theirs = opt_ours.param_groups[0], opt_theirs.param_groups[0]
    for key in (
        "names",
        "scaling_factors",
        "scaling_factor",
        "betas",
        "eps",
        "weight_decay",
        "correct_bias",
        "lr",
    ):
        assert group_ours[key] == group_theirs[key], key


def test_lorafa_rslora_argument_must_agree():
    ours = peftkit.get_peft_model(tiny_llama(), peftkit.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="use_rslora"):
        create_lorafa_optimizer(ours, r=2, lora_alpha=4, lr=1e-3, use_rslora=True)
    rs = peftkit.get_peft_model(
        tiny_llama(), peftkit.LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj"], use_rslora=True)
    )
    assert create_lorafa_optimizer(rs, r=4, lora_alpha=4, lr=1e-3).param_groups[0]["scaling_factor"] == 2.0


def test_lorafa_trains_dora_magnitude():
    """peft's LoRA-FA step fails on DoRA's magnitude vector; peftkit gives it a plain AdamW step."""
    ours = peftkit.get_peft_model(
        tiny_llama(), peftkit.LoraConfig(r=2, target_modules=["q_proj"], use_dora=True)
    )
    magnitude = ours.base_model.model.model.layers[0].self_attn.q_proj.lora_magnitude_vector["default"].weight
    start = magnitude.detach().clone()
    _lorafa_run("ours", ours, steps=2)
    assert not torch.equal(magnitude, start)
