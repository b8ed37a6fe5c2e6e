"""VeLoRA (`velora_config`): same projections, outputs, gradients and files as peft; A's gradient from the
compressed input."""

import copy
import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import llama_inputs, perturb_adapter_weights, tiny_gpt2, tiny_llama, trainable_names
from tests.lora_family.helpers import max_diff
from torch import nn

import peftkit
from peftkit.tuners.lora.velora import VeloraVariant

ATOL = 1e-5  # fp32 forward, merged forward and gradients vs peft
TARGETS = ["q_proj", "v_proj", "down_proj"]


def _pair(base, **velora):
    import peft

    kwargs = dict(r=4, target_modules=TARGETS, velora_config=dict({"num_groups": 5}, **velora))
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kwargs))
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(**kwargs))
    perturb_adapter_weights(theirs)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _train_step(model, inputs):
    """One training forward and backward: (logits, {trainable name: gradient})."""
    model.train()
    model.zero_grad()
    logits = model(**inputs).logits
    logits.pow(2).mean().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_config_fields_and_defaults_are_peft_s():
    from peft.tuners.lora.config import VeloraConfig as Theirs

    def defaults(cls):
        return {f.name: f.default for f in dataclasses.fields(cls)}

    assert defaults(peftkit.VeloraConfig) == defaults(Theirs)
    for bad in ({"num_groups": 0}, {"scale": 0.0}, {"init_type": "zeros"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            peftkit.VeloraConfig(**bad)


@pytest.mark.parametrize("init_type", ["batch_average", "batch_average_once", "random"])
def test_training_outputs_gradients_and_projections_equal_peft(init_type):
    base = tiny_llama()
    inputs = llama_inputs()
    theirs, ours = _pair(base, init_type=init_type)
    assert trainable_names(ours) == trainable_names(theirs)
    for step in range(2):  # the second step sees the projection the first one set (or kept)
        expected, their_grads = _train_step(theirs, inputs)
        logits, our_grads = _train_step(ours, inputs)
        assert max_diff(logits, expected) < ATOL
        assert our_grads.keys() == their_grads.keys()
        assert max(max_diff(our_grads[k], their_grads[k]) for k in our_grads) < ATOL
        embeds = {k: v for k, v in theirs.state_dict().items() if "lora_velora_embed" in k}
        assert embeds and max(max_diff(ours.state_dict()[k], v) for k, v in embeds.items()) < ATOL
        inputs = llama_inputs(seed=2 + step)
    if init_type == "random":
        embed = next(iter(embeds.values()))
        assert abs(embed.norm().item() - 1) < 1e-6  # a unit vector fixed at creation


def test_eval_merge_and_files_both_ways(tmp_path):
    import peft

    base = tiny_llama()
    inputs = llama_inputs()
    theirs, ours = _pair(base)
    _train_step(ours, inputs)  # sets the projections
    _train_step(theirs, inputs)
    ours.eval()
    expected = ours(**inputs).logits
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    assert sorted(load_file(tmp_path / "ours" / "adapter_model.safetensors")) == sorted(
        load_file(tmp_path / "theirs" / "adapter_model.safetensors")
    )
    in_peft = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours")
    assert max_diff(in_peft(**inputs).logits, expected) < ATOL
    loaded = peftkit.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "theirs")
    assert isinstance(loaded.peft_config["default"].velora_config, peftkit.VeloraConfig)
    assert max_diff(loaded(**inputs).logits, theirs.eval()(**inputs).logits) < ATOL
    layer = loaded.base_model.model.model.layers[0].self_attn.q_proj
    assert torch.equal(
        layer.lora_velora_embed["default"],
        theirs.state_dict()["base_model.model.model.layers.0.self_attn.q_proj.lora_velora_embed.default"],
    )
    ours.merge_adapter()
    assert max_diff(ours(**inputs).logits, expected) < ATOL


def test_one_feature_per_group_gives_the_exact_gradient():
    """With as many groups as features, each sub-token is one number and its projection on v = (+-1) is
    exact: A's gradient is plain LoRA's (scale 1), and twice it with scale 2."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(6, 5))
    x = torch.randn(4, 3, 6)
    grads = {}
    for name, config in {
        "plain": {},
        "exact": {"velora_config": {"num_groups": 6}},
        "scaled": {"velora_config": {"num_groups": 6, "scale": 2.0}},
    }.items():
        torch.manual_seed(1)  # the same initial factors for each
        model = peftkit.get_peft_model(
            copy.deepcopy(base), peftkit.LoraConfig(r=2, target_modules=["0"], **config)
        )
        perturb_adapter_weights(model)
        model.train()
        model(x).pow(2).sum().backward()
        grads[name] = model.base_model.model[0].lora_A["default"].weight.grad
    assert max_diff(grads["exact"], grads["plain"]) < 1e-5
    assert max_diff(grads["scaled"], 2 * grads["plain"]) < 1e-5


def test_linear_layers_only_and_gpt2_conv1d_works():
    with pytest.raises(ValueError, match="velora_config"):
        peftkit.get_peft_model(
            tiny_llama(), peftkit.LoraConfig(target_modules=["embed_tokens"], velora_config={"num_groups": 2})
        )
    model = peftkit.get_peft_model(
        tiny_gpt2(), peftkit.LoraConfig(target_modules=["c_attn"], velora_config={})
    )
    layer = model.base_model.model.transformer.h[0].attn.c_attn
    assert isinstance(layer.lora_variant["default"], VeloraVariant)
    assert layer.lora_velora_embed["default"].shape == (1,)  # ceil(32 features / 64 groups)
    model.train()
    model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    assert layer.lora_A["default"].weight.grad is not None
