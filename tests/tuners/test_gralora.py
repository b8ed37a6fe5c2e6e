"""GraLoRA against peft: the block grid (and its hybrid LoRA) gives peft's outputs, gradients and merges,
files move both ways, seeded initialisations are peft's, on Linear and GPT-2's Conv1D."""

import copy

import peft
import pytest
import torch
from tests.conftest import conv_net, tiny_gpt2, tiny_llama, tiny_llama_seq_cls
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case

import peftkit

METHOD = "GraloraConfig"
QV = {"r": 4, "target_modules": ["q_proj", "v_proj"]}
MLP = ["q_proj", "up_proj", "down_proj"]

CASES = {
    "llama_q_v": Case(tiny_llama, QV),
    "llama_defaults": Case(tiny_llama, {"r": 8}, task_type="CAUSAL_LM"),
    "llama_hybrid_random_init": Case(
        tiny_llama, {"r": 4, "hybrid_r": 2, "alpha": 16, "target_modules": MLP, "init_weights": False}
    ),
    "llama_k4": Case(tiny_llama, {"r": 8, "gralora_k": 4, "target_modules": MLP}),
    "gpt2_conv1d_hybrid": Case(tiny_gpt2, {"r": 4, "hybrid_r": 1}, task_type="CAUSAL_LM"),
    "seq_cls_bias": Case(
        lambda: tiny_llama_seq_cls(attention_bias=True), {**QV, "bias": "gralora_only"}, task_type="SEQ_CLS"
    ),
}
NUMERIC = ["llama_hybrid_random_init", "llama_k4", "gpt2_conv1d_hybrid"]

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v",
        merge=["llama_q_v", *NUMERIC],
        training="llama_hybrid_random_init",
        bf16=["llama_q_v", "llama_hybrid_random_init"],
        mixed_batch="llama_hybrid_random_init",
        low_cpu_mem_usage="llama_hybrid_random_init",
        gradients=NUMERIC,
        merged_as_peft=NUMERIC,
        several_adapters="llama_hybrid_random_init",
        default_targets="TRANSFORMERS_MODELS_TO_GRALORA_TARGET_MODULES_MAPPING",
        config_fields=False,  # tested below, with the scaling
    )
)


def test_seeded_initialisation_is_peft_s():
    base = tiny_llama()
    config = CASES["llama_hybrid_random_init"].config
    models = []
    for lib in (peft, peftkit):
        torch.manual_seed(42)
        models.append(lib.get_peft_model(copy.deepcopy(base), getattr(lib, METHOD)(**config)))
    theirs, ours = (dict(m.named_parameters()) for m in models)
    trained = [n for n, p in theirs.items() if p.requires_grad]
    assert len(trained) == 4 * 6  # A, B and the hybrid pair on 6 layers
    for name in trained:
        assert torch.equal(ours[name], theirs[name]), name


class TwoLayerNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin0 = torch.nn.Linear(8, 12)
        self.lin1 = torch.nn.Linear(12, 4)

    def forward(self, x):
        return self.lin1(torch.relu(self.lin0(x)))


def test_2d_and_4d_inputs():
    """A 2-D (batch, features) input gives peft's output; inputs with more leading dimensions, which peft
    does not take, give the merged weight's output."""
    config = {
        "r": 4,
        "hybrid_r": 1,
        "gralora_k": 2,
        "target_modules": ["lin0", "lin1"],
        "init_weights": False,
    }
    base = TwoLayerNet()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.GraloraConfig(**config)).eval()
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.GraloraConfig(**config)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    x4 = torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        checks.assert_close(ours(x), theirs(x), 1e-6, "2-D input")
        unmerged = ours(x4)
        ours.merge_adapter()
        checks.assert_close(unmerged, ours(x4), checks.MERGE_ATOL, "4-D input vs merged")


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="r should be divisible by gralora_k, but got 6 and 4"):
        peftkit.GraloraConfig(r=6, gralora_k=4)
    for bad, field in (
        ({"gralora_k": 0}, "gralora_k"),
        ({"hybrid_r": -1}, "hybrid_r"),
        ({"gralora_dropout": 2.0}, "gralora_dropout"),
        ({"bias": "x"}, "bias"),
    ):
        with pytest.raises(ValueError, match=field):
            peftkit.GraloraConfig(**bad)
    with pytest.raises(ValueError, match=r"in_features should be divisible by gralora_k, but got 32 and 3"):
        peftkit.get_peft_model(
            tiny_llama(), peftkit.GraloraConfig(r=3, gralora_k=3, target_modules=["q_proj"])
        )
    with pytest.raises(TypeError, match="not supported by GraloraModel.*Conv1D"):
        peftkit.get_peft_model(conv_net(), peftkit.GraloraConfig(r=2, target_modules=["conv2d"]))


def test_config_fields_and_defaults_are_peft_s():
    checks.check_config_fields(METHOD)
    layer = peftkit.get_peft_model(tiny_llama(), peftkit.GraloraConfig(**QV)).base_model.model.model.layers[0]
    assert layer.self_attn.q_proj.scaling["default"] == 64 / 4
