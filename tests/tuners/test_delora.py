"""DeLoRA against peft: the normalised update with its trained boundary gives peft's outputs, gradients
(lambda's included) and merges, the base weight's column norms are saved with the adapter, and files move
both ways."""

import copy

import peft
import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import conv_net, tiny_gpt2, tiny_llama, tiny_llama_seq_cls
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case

import peftkit

METHOD = "DeloraConfig"
QV = {"r": 4, "target_modules": ["q_proj", "v_proj"]}

CASES = {
    "llama_q_v": Case(tiny_llama, QV),
    "llama_defaults": Case(tiny_llama, {"r": 2}, task_type="CAUSAL_LM"),
    "llama_patterns_random_init": Case(
        tiny_llama,
        {
            "r": 4,
            "target_modules": ["q_proj", "v_proj", "up_proj", "down_proj"],
            "rank_pattern": {"v_proj": 2},
            "lambda_pattern": {"layers.1.self_attn.q_proj": 3},
            "delora_lambda": 5,
            "module_dropout": 0.1,
            "init_weights": False,
        },
    ),
    "seq_cls_bias": Case(
        lambda: tiny_llama_seq_cls(attention_bias=True), {**QV, "bias": "delora_only"}, task_type="SEQ_CLS"
    ),
}

NUMERIC = ["llama_q_v", "llama_patterns_random_init"]
globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v",
        merge=NUMERIC,
        training="llama_patterns_random_init",
        low_cpu_mem_usage="llama_patterns_random_init",
        gradients=NUMERIC,
        merged_as_peft=NUMERIC,
        several_adapters="llama_patterns_random_init",
        default_targets="TRANSFORMERS_MODELS_TO_DELORA_TARGET_MODULES_MAPPING",
    )
)


def test_seeded_initialisation_and_column_norms_are_peft_s(tmp_path):
    base = tiny_llama()
    config = CASES["llama_patterns_random_init"].config
    models = []
    for lib in (peft, peftkit):
        torch.manual_seed(3)
        models.append(lib.get_peft_model(copy.deepcopy(base), getattr(lib, METHOD)(**config)))
    theirs, ours = (m.state_dict() for m in models)
    adapter_keys = [k for k in theirs if "delora_" in k]
    assert len(adapter_keys) == 4 * 8  # A, B, lambda, w_norm on 8 layers
    for key in adapter_keys:
        assert torch.equal(ours[key], theirs[key]), key
    layer = models[1].base_model.model.model.layers[1].self_attn.q_proj
    assert torch.equal(layer.delora_w_norm["default"], layer.base_layer.weight.norm(dim=0))
    assert layer.delora_lambda["default"].item() == 3 and layer.r["default"] == 4
    assert models[1].base_model.model.model.layers[0].self_attn.v_proj.r["default"] == 2
    models[1].save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert torch.equal(
        saved["base_model.model.model.layers.1.self_attn.q_proj.delora_w_norm"],
        layer.delora_w_norm["default"],
    )


def test_the_update_is_bounded_by_lambda():
    """Each normalised component has unit norm: |delta_W|_F <= lambda * max column norm of W."""
    model = checks.peftkit_model(METHOD, CASES["llama_patterns_random_init"], tiny_llama(), seed=4)
    for module in model.modules():
        if isinstance(module, peftkit.tuners.delora.DeloraLayer):
            delta = module.get_delta_weight("default")
            bound = module.delora_lambda["default"].abs() * module.delora_w_norm["default"].max()
            assert delta.norm() <= bound + 1e-5


def test_bad_input_is_a_clear_error():
    for bad, field in (
        ({"r": 0}, "`r`"),
        ({"rank_pattern": {"q_proj": 0}}, "rank_pattern"),
        ({"module_dropout": -0.5}, "module_dropout"),
        ({"bias": "lora_only"}, "bias"),
        ({"layers_pattern": "layers"}, "layers_to_transform"),
    ):
        with pytest.raises(ValueError, match=field):
            peftkit.DeloraConfig(**bad)
    for model, target in ((conv_net(), "conv2d"), (tiny_gpt2(), "c_attn")):
        with pytest.raises(TypeError, match="not supported by DeloraModel"):
            peftkit.get_peft_model(model, peftkit.DeloraConfig(r=2, target_modules=[target]))
