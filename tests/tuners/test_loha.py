"""LoHa against peft: files move both ways with the same logits, same parameter names and files,
merge/unmerge/disable, training, several adapters, and the training-time dropouts."""

import copy

import peft
import pytest
import torch
from tests.conftest import conv_net, llama_inputs, perturb_adapter_weights, tiny_llama
from tests.tuners import method_checks as checks
from tests.tuners.method_checks import Case, conv_case

import peftkit

METHOD = "LoHaConfig"

CASES = {
    "llama_q_v": Case(tiny_llama, {"target_modules": ["q_proj", "v_proj"], "r": 4, "alpha": 6}),
    "llama_defaults": Case(tiny_llama, {}, task_type="CAUSAL_LM"),
    "llama_patterns": Case(
        tiny_llama,
        {
            "target_modules": ["q_proj", "o_proj", "up_proj"],
            "rank_pattern": {"o_proj": 2},
            "alpha_pattern": {r"layers\.1\.mlp\.up_proj": 3},
        },
    ),
    "conv_layers": conv_case({"target_modules": ["lin", "conv1d", "conv2d", "conv2d_1x1"], "r": 3}),
    "conv_effective": conv_case(
        {"target_modules": ["conv1d", "conv2d", "conv2d_1x1"], "r": 2, "use_effective_conv2d": True}
    ),
}

globals().update(
    checks.shared_tests(
        METHOD,
        CASES,
        one="llama_q_v",
        no_match="conv_layers",
    )
)


def test_unsupported_layer_is_a_clear_error():
    with pytest.raises(TypeError, match="Embedding.*only adapters for `torch.nn.Linear`"):
        peftkit.get_peft_model(conv_net(), peftkit.LoHaConfig(target_modules=["emb"]))


def test_invalid_config_values_are_clear_errors():
    with pytest.raises(ValueError, match="positive integer"):
        peftkit.LoHaConfig(r=0)
    with pytest.raises(ValueError, match=r"rank_dropout must be a probability in \[0, 1\]"):
        peftkit.LoHaConfig(rank_dropout=1.5)
    with pytest.raises(ValueError, match="layers_to_transform"):
        peftkit.LoHaConfig(layers_pattern="layers")


def test_two_adapters_equal_peft_and_merge():
    """Two LoHa adapters active together give peft's logits (1e-5); merged, the same within 1e-4."""
    base = tiny_llama()
    a, b = {"target_modules": ["q_proj", "v_proj"], "r": 2}, {"target_modules": ["v_proj", "down_proj"]}
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoHaConfig(**a), adapter_name="first")
    theirs.add_adapter("second", peft.LoHaConfig(**b))
    theirs.base_model.set_adapter(["first", "second"])
    perturb_adapter_weights(theirs)
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoHaConfig(**a), adapter_name="first")
    ours.add_adapter("second", peftkit.LoHaConfig(**b))
    ours.base_model.set_adapter(["first", "second"])
    ours.load_state_dict(theirs.state_dict(), strict=True)
    inputs = llama_inputs()
    with torch.no_grad():
        expected = theirs.eval()(**inputs).logits
        checks.assert_close(ours.eval()(**inputs).logits, expected, checks.ROUNDTRIP_ATOL, "two adapters")
        ours.merge_adapter()
        checks.assert_close(ours(**inputs).logits, expected, checks.MERGE_ATOL, "two merged adapters")
        ours.unmerge_adapter()
        ours.delete_adapter("second")
        theirs.delete_adapter("second")
        checks.assert_close(ours(**inputs).logits, theirs(**inputs).logits, checks.ROUNDTRIP_ATOL, "deleted")


def test_rank_dropout_drops_and_rescales_whole_output_rows():
    """In training, rank dropout keeps each output row of the delta or zeroes it; kept rows are scaled by
    1/mean(kept) (LoHa always rescales). Eval is deterministic."""
    lin = torch.nn.Sequential(torch.nn.Linear(8, 16))
    model = peftkit.get_peft_model(lin, peftkit.LoHaConfig(target_modules=["0"], r=2, rank_dropout=0.5))
    perturb_adapter_weights(model, scale=0.5)
    layer = model.base_model.model[0]
    x = torch.eye(8)
    with torch.no_grad():
        full = model.eval().base_model.model[0](x) - layer.base_layer(x)  # column j = row j of dW
        model.train()
        torch.manual_seed(0)
        dropped = layer(x) - layer.base_layer(x)
    kept = dropped.abs().amax(0) > 0
    assert 0 < kept.sum() < 16, "some rows kept, some dropped (seeded)"
    scale = 16 / kept.sum().item()
    torch.testing.assert_close(dropped, full * kept * scale, atol=1e-5, rtol=1e-5)


def test_module_dropout_one_skips_the_adapter_in_training_only():
    base = tiny_llama()
    config = peftkit.LoHaConfig(target_modules=["q_proj", "v_proj"], module_dropout=1.0)
    model = peftkit.get_peft_model(copy.deepcopy(base), config)
    perturb_adapter_weights(model)
    inputs = llama_inputs()
    with torch.no_grad():
        base_out = base(**inputs).logits
        checks.assert_close(model.train()(**inputs).logits, base_out, checks.BASE_ATOL, "module dropout 1")
        assert (model.eval()(**inputs).logits - base_out).abs().max() > 1e-3
